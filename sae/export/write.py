"""Write a trained SAE in SAELens's or sparsify's on-disk format (sae/formats/interop.py has the mappings).

SAELens also reads `sparsity.safetensors` (log10 feature densities, for dashboards and Neuronpedia): it comes
from the run's evaluation (`evaluate.py`'s density part, on training activations) when that was computed for
these weights, else from the run's activation cache (`--density-tokens` of them, harvested if missing).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae.activations.cache import ActivationCache, build_cache
from sae.core.errors import ConfigError
from sae.evaluation.measures import log10_density
from sae.evaluation.stats import activation_stats
from sae.formats.interop import CONFIG, SAELENS, SPARSIFY, SPARSITY, WEIGHTS, to_saelens, to_sparsify
from sae.formats.native import find_sae_dir, load_sae, weights_digest
from sae.formats.run_config import run_configs
from sae.lm.bridge import lazy_bridge

WRITERS = {SAELENS: to_saelens, SPARSIFY: to_sparsify}


def density_from_evaluation(sae_dir: Path) -> tuple[torch.Tensor, int] | None:
    """Fire counts from `eval/parts/density.json` of the run, if it was computed for these exact weights."""
    run_dir = sae_dir.parent if sae_dir.name == "sae" else sae_dir
    part = run_dir / "eval" / "parts" / "density.json"
    if not part.is_file():
        return None
    stored = json.loads(part.read_text())
    if stored.get("settings", {}).get("sae_weights") != weights_digest(sae_dir):
        return None
    return torch.tensor(stored["result"]["fire_counts"]), int(stored["result"]["tokens"])


def run_activation_cache(cfg: dict) -> ActivationCache:
    """The activation cache the SAE was trained from (harvested again if it is gone)."""
    if not cfg.get("train_config"):
        raise ConfigError(
            "the SAE's cfg.json has no train_config, so its activations cannot be found: "
            "run evaluate.py on it first, or export with --no-sparsity."
        )
    run = run_configs(cfg)
    return build_cache(lazy_bridge(run.model), run.model, run.data, run.activations, seed=run.seed)


def density_from_cache(sae, cfg: dict, n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Fire counts over `n_tokens` rows of the run's activation cache, drawn as evaluate.py draws them."""
    cache = run_activation_cache(cfg)
    order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed))[:n_tokens]
    chunks = (cache.rows(order[i : i + 8192]) for i in range(0, len(order), 8192))
    stats = activation_stats(sae, chunks, n_tokens)
    return stats.fire_counts, stats.tokens


def log_feature_density(sae, cfg: dict, sae_dir: Path, n_tokens: int) -> tuple[torch.Tensor, str]:
    """log10 feature densities (SAELens's `sparsity`, +1e-10 as there) and where they came from."""
    found = density_from_evaluation(sae_dir)
    if found is not None:
        counts, tokens = found
        source = f"evaluation density part ({tokens:,} training tokens)"
    else:
        counts, tokens = density_from_cache(sae, cfg, n_tokens)
        source = f"activation cache ({tokens:,} training tokens)"
    return log10_density(counts, tokens).float(), source


def write_export(out: Path, cfg_dict: dict, tensors: dict, sparsity: torch.Tensor | None, fmt: str, overwrite: bool) -> Path:
    """Write into a temporary sibling and rename, so OUT is never left half-written or silently replaced."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another OUT or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp-"))
    try:
        save_file(tensors, tmp / WEIGHTS[fmt])
        (tmp / CONFIG).write_text(json.dumps(cfg_dict, indent=2))
        if sparsity is not None:
            save_file({"sparsity": sparsity.contiguous()}, tmp / SPARSITY)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export(
    run_dir: str | Path, fmt: str, out: str | Path, sparsity: bool = True, density_tokens: int = 100_000, overwrite: bool = False
) -> Path:
    if fmt not in WRITERS:
        raise ConfigError(f"--format {fmt}: choose one of {sorted(WRITERS)}.")
    sae_dir = find_sae_dir(run_dir)
    sae, cfg = load_sae(sae_dir)
    cfg_dict, tensors = WRITERS[fmt](sae.state_dict(), cfg)
    log_density = None
    if fmt == SAELENS and sparsity:
        log_density, source = log_feature_density(sae, cfg, sae_dir, density_tokens)
        print(f"sparsity.safetensors: log10 feature densities from the {source}")
    return write_export(Path(out), cfg_dict, tensors, log_density, fmt, overwrite)
