"""The metrics stage of `evaluate.py`: each part computed once, stored, and assembled into metrics.json.

Parts (density on the training activations, reconstruction statistics on held-out activations,
spliced cross-entropy) are stored under `eval/parts/` keyed by their settings and the SAE's weights,
so an interrupted or repeated evaluation only computes what is missing. The zero-ablated model run of
the spliced cross-entropy does not depend on the SAE: its losses are kept beside the activation cache,
so evaluating the next SAE of the same model and hook runs the model twice per batch, not three times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sae.activations.cache import build_cache
from sae.activations.harvest import harvest
from sae.core.files import atomic_write_json, finite_or_none
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


def compute_metrics(
    sae, sae_dir: Path, eval_dir: Path, run: RunConfigs, m: MetricsConfig, seed: int, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], dict[str, Path]]:
    """metrics.json's content and the plots written beside it."""
    model_cfg, data_cfg, act_cfg = run.model, run.data, run.activations
    bridge = lazy_bridge(model_cfg)
    store = PartStore(
        eval_dir / "parts", {"sae_weights": weights_digest(sae_dir), "hook": hook_name(model_cfg), "model": model_cfg.name}, log
    )
    data_id = {"data": OmegaConf.to_container(OmegaConf.structured(data_cfg))}
    budget = m.memory_budget_mb * 2**20

    def density_part() -> dict:
        cache = build_cache(bridge, model_cfg, data_cfg, act_cfg, seed=run.seed)
        order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed))[: m.density_tokens]
        chunks = (cache.rows(order[i : i + 8192]) for i in range(0, len(order), 8192))
        stats = activation_stats(sae, chunks, m.density_tokens, budget)
        return {"fire_counts": stats.counts().tolist(), "tokens": stats.tokens}

    def heldout_part() -> dict:
        stream = harvest(bridge(), model_cfg, data_cfg, m.harvest_batch_size, split="heldout")
        stats = activation_stats(sae, stream, m.heldout_tokens, budget)
        counts = density_summary(stats.counts(), stats.tokens)
        return {**stats.result(), "dead_fraction": counts["dead_fraction"]}

    def ce_part() -> dict:
        model = bridge()
        bos = bos_token_id(model)
        tokens = heldout_tokens(model.tokenizer, data_cfg, m.ce_tokens, bos)
        memo_path = zero_ablated_path(act_cfg.cache_dir, model_cfg, model)
        zero_ablated = load_zero_ablated(memo_path)
        known = set(zero_ablated)
        reconstruct = sae_reconstruction(sae)
        result = spliced_loss(model, hook_name(model_cfg), tokens, reconstruct, bos, m.ce_batch_size, zero_ablated)
        n_batches = -(-len(tokens) // m.ce_batch_size)
        n_new = len(set(zero_ablated) - known)
        log(f"[spliced_loss] zero-ablated run: {n_batches - n_new} of {n_batches} batches reused from {memo_path}")
        if n_new:
            save_zero_ablated(memo_path, zero_ablated)
        return result.as_dict()

    metrics: dict[str, Any] = {
        "sae_path": str(sae_dir),
        "model": model_cfg.name,
        "hook": hook_name(model_cfg),
        "d_in": sae.d_in,
        "n_features": sae.n_features,
        "expansion": sae.n_features / sae.d_in,
    }
    plots: dict[str, Path] = {}
    if m.density_tokens:
        density = store.get_or_compute(
            "density",
            {"density_tokens": m.density_tokens, "seed": seed, "activations": act_cfg.n_tokens, **data_id},
            density_part,
        )
        counts, n_tok = torch.tensor(density["fire_counts"]), density["tokens"]
        metrics.update(density_summary(counts, n_tok))
        plots["density_histogram"] = plot_density_histogram(
            log10_density(counts, n_tok).numpy(),
            eval_dir / "density_histogram.png",
            title=f"{sae.n_features} features ({sae.n_features // sae.d_in}x), density over {n_tok:,} training tokens",
        )
        rare = (counts.double() / max(n_tok, 1) < ULTRALOW_DENSITY).to(sae.W_dec.device)
        groups = {"ultralow (<1e-6)": sae.W_dec[rare].detach(), "rest": sae.W_dec[~rare].detach()}
        means = {k: mean_pairwise_cosine(v) for k, v in groups.items()}
        metrics.update(
            {
                "decoder_cosine_ultralow": means["ultralow (<1e-6)"],
                "decoder_cosine_rest": means["rest"],
                "n_ultralow": int(rare.sum()),
            }
        )
        plots["decoder_similarity"] = plot_decoder_similarity(
            {k: pairwise_cosines(v, m.similarity_plot_features, seed).cpu().numpy() for k, v in groups.items()},
            means,
            eval_dir / "decoder_similarity.png",
            title="rare features are more similar? pairwise decoder cosines",
        )
    if m.heldout_tokens:
        heldout = store.get_or_compute("heldout", {"heldout_tokens": m.heldout_tokens, **data_id}, heldout_part)
        metrics.update({k: v for k, v in heldout.items() if k not in ("tokens", "dead_fraction")})
        metrics.update({"heldout_tokens": heldout["tokens"], "heldout_dead_fraction": heldout["dead_fraction"]})
    if m.ce_tokens:
        ce = store.get_or_compute("spliced_loss", {"ce_tokens": m.ce_tokens, **data_id}, ce_part)
        metrics.update({k if k != "tokens" else "ce_tokens": v for k, v in ce.items()})
    return finite_or_none(metrics), plots
