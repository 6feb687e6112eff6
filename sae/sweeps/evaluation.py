"""Evaluate every finished SAE of a sweep directory in one job, under one protocol, so the SAEs compare.

    python evaluate.py sweep_dir=multirun/<name> stage=all                       # token-pattern explainer, offline
    python evaluate.py sweep_dir=multirun/<name> stage=all explainer=openai explainer.base_url=...

The protocol: every SAE is scored on the same held-out windows (`interp.n_contexts` windows of
`interp.window` tokens of its training data), on the same number of features (`interp.n_features`),
drawn with the same seed at random among the features that fire on at least `interp.n_explain` of those
windows (the ones that can be explained at all), with the same explainer and scoring settings.

Shared across the SAEs of one language model: the loaded model; the held-out passes that stop at the
hooked layer (the records' windows, and the metrics' held-out activations within `RECORD_BUDGET`: computed
once, replayed to the next SAE); and the zero-ablated losses of the spliced cross-entropy
(sae/evaluation/metrics_stage.py keeps them by token batch).

Each SAE's results go to its own run's `eval/` directory, which resumes part by part; when all of an SAE's
stages are done, `eval/sweep_evaluation.json` records the protocol, and a rerun under the same protocol
skips that SAE without loading anything. The job's own record is `<sweep dir>/eval/sweep_evaluation.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from sae.core.checks import require
from sae.core.files import atomic_write_json
from sae.evaluation.config import default_eval_dir
from sae.evaluation.stats import rows_per_chunk
from sae.formats.native import WEIGHTS, read_sae_config, weights_digest
from sae.formats.run_config import run_configs
from sae.interp.backends import explainer_config
from sae.interp.config import InterpConfig
from sae.interp.pipeline import InterpFailed
from sae.lm.bridge import bos_token_id, load_language_model
from sae.sweeps.report import find_run_dirs
from sae.text.contexts import batched, iter_contexts, iter_texts

RECORD = "sweep_evaluation.json"


def finished_runs(sweep_dir: Path) -> list[Path]:
    """The sweep's runs that hold a trained SAE and their summary (as the sweep report counts them)."""
    return [d for d in find_run_dirs(sweep_dir) if (d / "sae" / WEIGHTS).exists() and (d / "summary.json").exists()]


def _batch_key(tokens: torch.Tensor, hook: str, stop_at_layer: int | None) -> str:
    digest = hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest()
    return f"{digest}{tuple(tokens.shape)}:{hook}:{stop_at_layer}"


# Memory for the hooked activations a ReplayBridge records on its own (e.g. the metrics' held-out pass,
# ~0.7 GB for 300,000 tokens of a 576-wide model); passes beyond it are computed for every SAE as usual.
RECORD_BUDGET = 2 * 2**30


class ReplayBridge:
    """The language model, except that hooked activations computed once are replayed to the next SAE.

    `run_with_cache(tokens, names_filter=<hook>, stop_at_layer=...)` (the harvests of held-out activations,
    which stop at the hooked layer) is answered from what an earlier call with the same tokens computed:
    always for batches passed to `remember`, and for others while their total stays within `budget` bytes.
    Everything else is the model's own."""

    def __init__(self, model, budget: int = RECORD_BUDGET):
        self._model = model
        self._replay: dict[str, torch.Tensor] = {}
        self._budget, self._recorded = budget, 0
        self.replayed = 0  # calls answered from the record

    def remember(self, tokens: torch.Tensor, hook: str, stop_at_layer: int, acts: torch.Tensor) -> None:
        self._replay[_batch_key(tokens, hook, stop_at_layer)] = acts

    def run_with_cache(self, tokens, names_filter=None, stop_at_layer=None, **kwargs):
        if not isinstance(names_filter, str) or stop_at_layer is None or kwargs:
            return self._model.run_with_cache(tokens, names_filter=names_filter, stop_at_layer=stop_at_layer, **kwargs)
        key = _batch_key(tokens, names_filter, stop_at_layer)
        acts = self._replay.get(key)
        if acts is not None:
            self.replayed += 1
            return None, {names_filter: acts.to(tokens.device)}
        logits, cache = self._model.run_with_cache(tokens, names_filter=names_filter, stop_at_layer=stop_at_layer)
        acts = cache[names_filter]
        if self._recorded + acts.numel() * acts.element_size() <= self._budget:
            self._replay[key] = acts.detach().cpu()
            self._recorded += acts.numel() * acts.element_size()
        return logits, cache

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclasses.dataclass
class Windows:
    """The protocol's held-out windows of one data setting: token batches [B, T+1] (BOS first) and the hook's
    activations on them [B, T+1, d], on the CPU, batched exactly as the records pass batches them."""

    tokens: list[torch.Tensor]
    acts: list[torch.Tensor]
    bos: int


@torch.no_grad()
def heldout_windows(bridge: ReplayBridge, hook: str, layer: int, data_cfg, interp: InterpConfig) -> Windows:
    """One model pass over the records' held-out windows; each batch is remembered by `bridge` for replay."""
    bos = bos_token_id(bridge)
    contexts = iter_contexts(iter_texts(data_cfg, "heldout"), bridge.tokenizer, interp.window + 1, bos)
    tokens_out, acts_out, n = [], [], 0
    with torch.inference_mode():
        for tokens in batched(contexts, interp.batch_size):
            tokens = tokens[: interp.n_contexts - n].to(bridge.cfg.device)
            _, cache = bridge.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1)
            acts = cache[hook].cpu()
            bridge.remember(tokens, hook, layer + 1, acts)
            tokens_out.append(tokens.cpu())
            acts_out.append(acts)
            n += len(tokens)
            if n >= interp.n_contexts:
                break
    return Windows(tokens_out, acts_out, bos)


@torch.no_grad()
def windows_fired(sae, windows: Windows, memory_budget: int = 512 * 2**20) -> torch.Tensor:
    """Per feature, on how many windows it is > 0 somewhere (BOS positions excluded, as the records pass does)."""
    p = sae.W_dec
    fired = torch.zeros(sae.n_features, dtype=torch.long)
    for tokens, acts in zip(windows.tokens, windows.acts, strict=True):
        body, x = tokens[:, 1:], acts[:, 1:]
        step = max(1, rows_per_chunk(sae.n_features, memory_budget, p.element_size()) // max(1, body.shape[1]))
        for start in range(0, len(body), step):
            f = sae.encode(x[start : start + step].to(p.device, p.dtype))
            f = f.masked_fill((body[start : start + step] == windows.bos).to(f.device)[..., None], 0)
            fired += (f.amax(dim=1) > 0).sum(dim=0).cpu()
    return fired


def sample_units(fired: torch.Tensor, interp: InterpConfig) -> tuple[list[int], int]:
    """`interp.n_features` units drawn with `interp.seed` among those firing on >= `interp.n_explain` windows
    (fewer when fewer fire); and how many were eligible."""
    eligible = torch.nonzero(fired >= interp.n_explain).flatten().numpy()
    chosen = np.random.default_rng(interp.seed).permutation(eligible)[: interp.n_features]
    return [int(u) for u in chosen], int(len(eligible))


def protocol(cfg, names: tuple[str, ...], interp: InterpConfig | None) -> dict:
    """Everything that decides an SAE's sweep results except the SAE itself."""
    container = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
    out: dict[str, Any] = {
        "stages": list(names),
        "seed": cfg.seed,
        "overrides": {k: container(getattr(cfg, k)) for k in ("model", "data", "activations")},
    }
    if "metrics" in names:
        out["metrics"] = dataclasses.asdict(cfg.metrics)
        out["eval_corpora"] = list(cfg.eval_corpora)
    if interp is not None:
        out["interp"] = {k: v for k, v in dataclasses.asdict(interp).items() if k != "features"}
        out["explainer"] = explainer_config(cfg.explainer).identity
    return json.loads(json.dumps(out, default=str))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _release(holder: dict) -> None:
    holder.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_sweep(
    cfg,
    sweep_dir: Path,
    job_dir: Path,
    names: tuple[str, ...],
    interp: InterpConfig | None,
    load_job: Callable[..., Any],
    run_stages: Callable[[Any, tuple[str, ...]], dict],
    log: Callable[[str], None] = print,
) -> dict:
    """Run the stages `names` on every finished SAE of the sweep (see the module docstring); returns the job's
    record, also written to `job_dir/sweep_evaluation.json` after each SAE.

    `interp`: the interpretability settings when `names` has the interp stage (their `features` are chosen here).
    `load_job(cfg, sae_dir, eval_dir, bridge)` and `run_stages(job, names)` are evaluate.py's. Raises
    InterpFailed at the end, after every SAE had its turn, when an SAE's interpretability stage failed."""
    require(interp is None or interp.units == "features", "sweep_dir: the protocol samples SAE features; use units=features.")
    require(interp is None or interp.features is None, "sweep_dir: the protocol samples the features; drop interp.features.")
    runs = finished_runs(sweep_dir)
    require(bool(runs), f"sweep_dir={sweep_dir}: no finished runs (a run directory with sae/{WEIGHTS} and summary.json).")
    proto = protocol(cfg, names, interp)
    record: dict[str, Any] = {"sweep_dir": str(sweep_dir), "protocol": proto, "runs": {}}
    overrides = {"model": cfg.model, "data": cfg.data, "activations": cfg.activations, "logger": cfg.logger}

    def save(rel: str, entry: dict) -> None:
        record["runs"][rel] = entry
        atomic_write_json(job_dir / RECORD, record)

    todo = []
    for run_dir in runs:
        rel, sae_dir = str(run_dir.relative_to(sweep_dir)), run_dir / "sae"
        eval_dir, digest = Path(default_eval_dir(str(sae_dir))), weights_digest(sae_dir)
        done = _read(eval_dir / RECORD)
        if done.get("protocol") == proto and done.get("sae_weights") == digest:
            log(f"[sweep] {rel}: already evaluated under this protocol; skipping")
            save(rel, {**done.get("result", {}), "status": "skipped (done before)"})
            continue
        model = run_configs(read_sae_config(sae_dir), overrides).model
        todo.append(((model.name, model.dtype, model.device), model, rel, sae_dir, eval_dir, digest))
    todo.sort(key=lambda t: t[0])  # one language model at a time

    failed: list[str] = []
    loaded: dict[str, ReplayBridge] = {}
    windows: dict[str, Windows] = {}
    current = None
    for key, model_cfg, rel, sae_dir, eval_dir, digest in todo:
        if key != current:  # the next language model: let the last one go
            _release(loaded)
            windows.clear()
            current = key

        def bridge(model_cfg=model_cfg) -> ReplayBridge:
            if "model" not in loaded:
                log(f"[sweep] loading {model_cfg.name}")
                loaded["model"] = ReplayBridge(load_language_model(model_cfg))
            return loaded["model"]

        log(f"[sweep] {rel}: evaluating ({', '.join(names)})")
        job = load_job(dataclasses.replace(cfg, sae_path=str(sae_dir), sweep_dir=None), sae_dir, eval_dir, bridge)
        result: dict[str, Any] = {}
        if interp is not None:
            trained_on = run_configs(job.sae_cfg).data  # the records pass reads the training data's held-out split
            hook, layer = job.sae_cfg["hook_name"], int(job.sae_cfg["layer"])
            window_key = json.dumps([hook, layer, dataclasses.asdict(trained_on), proto["interp"]], sort_keys=True, default=str)
            if window_key not in windows:
                windows[window_key] = heldout_windows(bridge(), hook, layer, trained_on, interp)
                n = sum(len(t) for t in windows[window_key].tokens)
                log(f"[sweep] held-out windows: {n} of {interp.window} tokens at {hook}, one pass for every SAE reading them")
            fired = windows_fired(job.sae, windows[window_key], cfg.metrics.memory_budget_mb * 2**20)
            units, eligible = sample_units(fired, interp)
            result.update({"features": units, "eligible_features": eligible})
            log(f"[sweep] {rel}: {eligible} of {job.sae.n_features} features fire on >= {interp.n_explain} windows: {units}")
            if not units:
                failed.append(f"{rel}: no feature fires on {interp.n_explain} of the {interp.n_contexts} held-out windows")
                save(rel, {**result, "status": "failed", "reason": failed[-1]})
                continue
            job.cfg = dataclasses.replace(job.cfg, interp=dataclasses.replace(interp, features=units))
        replayed = loaded["model"].replayed if "model" in loaded else 0
        try:
            run_stages(job, names)
        except InterpFailed as exc:
            failed.append(f"{rel}: {exc}")
            save(rel, {**result, "status": "failed", "reason": str(exc)})
            continue
        if "model" in loaded:
            log(f"[sweep] {rel}: {loaded['model'].replayed - replayed} held-out model passes replayed instead of computed")
        atomic_write_json(eval_dir / RECORD, {"protocol": proto, "sae_weights": digest, "result": result})
        save(rel, {**result, "status": "evaluated"})
    _release(loaded)
    if failed:
        raise InterpFailed(f"{len(failed)} of {len(runs)} SAEs failed: " + "; ".join(failed)[:1000])
    return record
