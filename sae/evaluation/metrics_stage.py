"""The metrics stage of `evaluate.py`: each part computed once, stored, and assembled into metrics.json.

Parts (density on the training activations, reconstruction statistics on held-out activations,
spliced cross-entropy) are stored under `eval/parts/` keyed by their settings and the SAE's weights,
so an interrupted or repeated evaluation only computes what is missing. The zero-ablated model run of
the spliced cross-entropy does not depend on the SAE: its losses are kept beside the activation cache,
so evaluating the next SAE of the same model and hook runs the model twice per batch, not three times.

Each part is a `MetricPart` in `METRIC_PARTS` (its settings, its computation, what it adds to metrics.json);
a new per-SAE metric is one more entry there. Parts that measure held-out text also run on other corpora
(`compute_corpus_metrics`, evaluate.py's `eval_corpora`), each corpus's parts stored apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sae.activations.cache import build_cache
from sae.activations.harvest import harvest
from sae.core.files import atomic_write_json, finite_or_none
from sae.evaluation.absorption import AbsorptionConfig, absorption_metrics
from sae.evaluation.config import MetricsConfig
from sae.evaluation.measures import ULTRALOW_DENSITY, density_summary, log10_density
from sae.evaluation.plots import plot_decoder_similarity, plot_density_histogram
from sae.evaluation.spliced import sae_reconstruction, spliced_loss
from sae.evaluation.stats import activation_stats, mean_pairwise_cosine, pairwise_cosines
from sae.formats.native import weights_digest
from sae.formats.run_config import RunConfigs
from sae.lm.bridge import bos_token_id, hook_name, lazy_bridge
from sae.lm.config import ModelConfig
from sae.text.contexts import heldout_tokens
from sae.text.sources import DataConfig


class PartStore:
    """One JSON file per finished part, reused only when its settings (incl. the SAE's weights) match."""

    def __init__(self, directory: Path, identity: dict, log: Callable[[str], None] = print):
        self.directory = directory
        self.identity = identity
        self.log = log

    def get_or_compute(self, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
        key = {**self.identity, **settings}
        path = self.directory / f"{name}.json"
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except json.JSONDecodeError:
                stored = {}
            if stored.get("settings") == key:
                self.log(f"[{name}] reusing {path}")
                return stored["result"]
        self.log(f"[{name}] computing ...")
        result = compute()
        atomic_write_json(path, {"settings": key, "result": result}, indent=None)
        return result


def model_weights_digest(model) -> str:
    """A hash of the language model's parameters (once per evaluation, not per batch): a local model directory
    whose weights change gets new zero-ablated losses, never the stale ones of its old weights."""
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        data = param.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def zero_ablated_path(cache_dir: str | Path, model_cfg: ModelConfig, model) -> Path:
    """One file per model weights, dtype, hook and device kind; its entries are keyed by the token batch itself."""
    device = model.cfg.device
    identity = [model_cfg.name, model_weights_digest(model), model_cfg.dtype, hook_name(model_cfg), torch.device(device).type]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return Path(cache_dir) / "zero_ablated" / f"{digest}.json"


def load_zero_ablated(path: Path) -> dict[str, torch.Tensor]:
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {key: torch.tensor(value, dtype=torch.float64) for key, value in stored.items()}


def save_zero_ablated(path: Path, losses: dict[str, torch.Tensor]) -> None:
    """Merged with what a concurrent evaluation may have written since we read it (an entry lost to a race
    is only computed again)."""
    merged = {**load_zero_ablated(path), **losses}
    atomic_write_json(path, {key: value.tolist() for key, value in merged.items()}, indent=None)


@dataclass
class PartContext:
    """What a metric part reads: the SAE, the run it came from, the text it is measured on, the settings."""

    sae: Any
    sae_dir: Path
    eval_dir: Path
    run: RunConfigs
    data: DataConfig  # the training data, or another evaluation corpus
    m: MetricsConfig
    seed: int
    bridge: Callable[[], Any]  # the language model, loaded on first use
    log: Callable[[str], None]

    @property
    def data_id(self) -> dict:
        return {"data": OmegaConf.to_container(OmegaConf.structured(self.data))}

    @property
    def memory_budget(self) -> int:
        return self.m.memory_budget_mb * 2**20


@dataclass(frozen=True)
class MetricPart:
    """One stored part of the metrics: its settings (None: skipped under these settings, e.g. a token count of
    0), its computation (a JSON-able dict, stored under eval/parts/ and reused while the settings and the SAE's
    weights match) and what it adds to metrics.json, with any plots. `per_corpus`: it measures held-out text,
    so it is computed again on every evaluation corpus (`eval_corpora`)."""

    name: str
    settings: Callable[[PartContext], dict | None]
    compute: Callable[[PartContext], dict]
    report: Callable[[PartContext, dict], tuple[dict[str, Any], dict[str, Path]]]
    per_corpus: bool = False


def _density_settings(c: PartContext) -> dict | None:
    if not c.m.density_tokens:
        return None
    return {"density_tokens": c.m.density_tokens, "seed": c.seed, "activations": c.run.activations.n_tokens, **c.data_id}


def _density_compute(c: PartContext) -> dict:
    cache = build_cache(c.bridge, c.run.model, c.data, c.run.activations, seed=c.run.seed)
    order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(c.seed))[: c.m.density_tokens]
    chunks = (cache.rows(order[i : i + 8192]) for i in range(0, len(order), 8192))
    stats = activation_stats(c.sae, chunks, c.m.density_tokens, c.memory_budget)
    return {"fire_counts": stats.counts().tolist(), "tokens": stats.tokens}


def _density_report(c: PartContext, density: dict) -> tuple[dict, dict[str, Path]]:
    sae, eval_dir = c.sae, c.eval_dir
    counts, n_tok = torch.tensor(density["fire_counts"]), density["tokens"]
    metrics = density_summary(counts, n_tok)
    plots = {
        "density_histogram": plot_density_histogram(
            log10_density(counts, n_tok).numpy(),
            eval_dir / "density_histogram.png",
            title=f"{sae.n_features} features ({sae.n_features // sae.d_in}x), density over {n_tok:,} training tokens",
        )
    }
    rare = (counts.double() / max(n_tok, 1) < ULTRALOW_DENSITY).to(sae.W_dec.device)
    groups = {"ultralow (<1e-6)": sae.W_dec[rare].detach(), "rest": sae.W_dec[~rare].detach()}
    means = {k: mean_pairwise_cosine(v) for k, v in groups.items()}
    metrics["decoder_cosine_ultralow"], metrics["decoder_cosine_rest"] = means["ultralow (<1e-6)"], means["rest"]
    metrics["n_ultralow"] = int(rare.sum())
    plots["decoder_similarity"] = plot_decoder_similarity(
        {k: pairwise_cosines(v, c.m.similarity_plot_features, c.seed).cpu().numpy() for k, v in groups.items()},
        means,
        eval_dir / "decoder_similarity.png",
        title="rare features are more similar? pairwise decoder cosines",
    )
    return metrics, plots


def _heldout_compute(c: PartContext) -> dict:
    stream = harvest(c.bridge(), c.run.model, c.data, c.m.harvest_batch_size, split="heldout")
    stats = activation_stats(c.sae, stream, c.m.heldout_tokens, c.memory_budget)
    counts = density_summary(stats.counts(), stats.tokens)
    return {**stats.result(), "dead_fraction": counts["dead_fraction"]}


def _heldout_report(c: PartContext, heldout: dict) -> tuple[dict, dict[str, Path]]:
    metrics = {k: v for k, v in heldout.items() if k not in ("tokens", "dead_fraction")}
    metrics.update({"heldout_tokens": heldout["tokens"], "heldout_dead_fraction": heldout["dead_fraction"]})
    return metrics, {}


def _spliced_compute(c: PartContext) -> dict:
    model = c.bridge()
    bos = bos_token_id(model)
    tokens = heldout_tokens(model.tokenizer, c.data, c.m.ce_tokens, bos)
    memo_path = zero_ablated_path(c.run.activations.cache_dir, c.run.model, model)
    zero_ablated = load_zero_ablated(memo_path)
    known = set(zero_ablated)
    reconstruct = sae_reconstruction(c.sae)
    result = spliced_loss(model, hook_name(c.run.model), tokens, reconstruct, bos, c.m.ce_batch_size, zero_ablated)
    n_batches = -(-len(tokens) // c.m.ce_batch_size)
    n_new = len(set(zero_ablated) - known)
    c.log(f"[spliced_loss] zero-ablated run: {n_batches - n_new} of {n_batches} batches reused from {memo_path}")
    if n_new:
        save_zero_ablated(memo_path, zero_ablated)
    return result.as_dict()


def _spliced_report(c: PartContext, ce: dict) -> tuple[dict, dict[str, Path]]:
    return {k if k != "tokens" else "ce_tokens": v for k, v in ce.items()}, {}


def _absorption_config(c: PartContext) -> AbsorptionConfig:
    return AbsorptionConfig(n_words=c.m.absorption_words, seed=c.seed)


def _absorption_compute(c: PartContext) -> dict:
    return absorption_metrics(c.sae, c.bridge, c.run.model, c.run.activations.cache_dir, _absorption_config(c), c.log)


def _absorption_report(c: PartContext, result: dict) -> tuple[dict, dict[str, Path]]:
    keys = ("mean_absorption_fraction", "mean_full_absorption_rate", "mean_main_latents", "mean_probe_f1", "mean_sparse_probe_f1")
    return {f"absorption_{k.removeprefix('mean_')}": result[k] for k in keys}, {}


# The parts of metrics.json, in order. A new metric is one more entry (its settings in MetricsConfig).
METRIC_PARTS: list[MetricPart] = [
    MetricPart("density", _density_settings, _density_compute, _density_report),
    MetricPart(
        "heldout",
        lambda c: {"heldout_tokens": c.m.heldout_tokens, **c.data_id} if c.m.heldout_tokens else None,
        _heldout_compute,
        _heldout_report,
        per_corpus=True,
    ),
    MetricPart(
        "spliced_loss",
        lambda c: {"ce_tokens": c.m.ce_tokens, **c.data_id} if c.m.ce_tokens else None,
        _spliced_compute,
        _spliced_report,
        per_corpus=True,
    ),
    MetricPart(
        "absorption",
        lambda c: {"absorption": asdict(_absorption_config(c))} if c.m.absorption_words else None,
        _absorption_compute,
        _absorption_report,
    ),
]


def _part_store(c: PartContext, directory: Path) -> PartStore:
    identity = {"sae_weights": weights_digest(c.sae_dir), "hook": hook_name(c.run.model), "model": c.run.model.name}
    return PartStore(directory, identity, c.log)


def _run_parts(c: PartContext, store: PartStore, parts: list[MetricPart]) -> tuple[dict[str, Any], dict[str, Path]]:
    metrics: dict[str, Any] = {}
    plots: dict[str, Path] = {}
    for part in parts:
        settings = part.settings(c)
        if settings is None:
            continue
        result = store.get_or_compute(part.name, settings, lambda part=part: part.compute(c))
        values, images = part.report(c, result)
        metrics.update(values)
        plots.update(images)
    return metrics, plots


def compute_metrics(
    sae,
    sae_dir: Path,
    eval_dir: Path,
    run: RunConfigs,
    m: MetricsConfig,
    seed: int,
    log: Callable[[str], None] = print,
    bridge: Callable[[], Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """metrics.json's content (on the training data's held-out split) and the plots written beside it.

    `bridge`: a loader of the language model shared with other evaluations (default: loaded here on first use)."""
    c = PartContext(sae, sae_dir, eval_dir, run, run.data, m, seed, bridge or lazy_bridge(run.model), log)
    metrics: dict[str, Any] = {
        "sae_path": str(sae_dir),
        "model": run.model.name,
        "hook": hook_name(run.model),
        "d_in": sae.d_in,
        "n_features": sae.n_features,
        "expansion": sae.n_features / sae.d_in,
    }
    values, plots = _run_parts(c, _part_store(c, eval_dir / "parts"), METRIC_PARTS)
    metrics.update(values)
    return finite_or_none(metrics), plots


def corpus_parts_dir(eval_dir: Path, run: RunConfigs, data: DataConfig) -> Path:
    """Where one corpus's parts are stored: the training data's own parts, else a folder per data settings."""
    settings = OmegaConf.to_container(OmegaConf.structured(data))
    if settings == OmegaConf.to_container(OmegaConf.structured(run.data)):
        return eval_dir / "parts"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return eval_dir / "parts" / "corpora" / f"{data.alias}-{digest}"


def compute_corpus_metrics(
    sae,
    sae_dir: Path,
    eval_dir: Path,
    run: RunConfigs,
    m: MetricsConfig,
    seed: int,
    corpora: dict[str, DataConfig],
    log: Callable[[str], None] = print,
    bridge: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The held-out metrics (the `per_corpus` parts) on each corpus, keyed by its name; each corpus's parts
    are stored apart, keyed by its data settings, so a rerun resumes corpus by corpus."""
    bridge = bridge or lazy_bridge(run.model)
    parts = [p for p in METRIC_PARTS if p.per_corpus]
    out = {}
    for name, data in corpora.items():
        c = PartContext(sae, sae_dir, eval_dir, run, data, m, seed, bridge, lambda msg, name=name: log(f"[{name}] {msg}"))
        values, _ = _run_parts(c, _part_store(c, corpus_parts_dir(eval_dir, run, data)), parts)
        out[name] = finite_or_none({"data": data.alias, "source": data.source, "name": data.name, **values})
    return out
