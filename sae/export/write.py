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
from sae.core.checks import require_directory_path
from sae.core.errors import ConfigError, NoSpaceError
from sae.core.files import is_disk_full, require_free_space
from sae.evaluation.measures import log10_density
from sae.evaluation.stats import activation_stats
from sae.formats.interop import CONFIG, SAELENS, SPARSIFY, SPARSITY, WEIGHTS, to_saelens, to_sparsify
from sae.formats.native import find_sae_dir, load_sae, weights_digest
from sae.formats.run_config import run_configs
from sae.lm.bridge import lazy_bridge

WRITERS = {SAELENS: to_saelens, SPARSIFY: to_sparsify}
# Written into every export: `--overwrite` replaces only a folder that holds it (and nothing but the export's files).
MARKER = ".sae-export.json"
EXPORT_FILES = {MARKER, CONFIG, SPARSITY, *WEIGHTS.values()}


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


def check_out(out: Path, sae_dir: Path, overwrite: bool) -> None:
    """OUT may be new, empty, or (with --overwrite) a previous export holding only the export's own files:
    an export never deletes what it did not write."""
    require_directory_path(out, "OUT")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT={out} is a file: choose a folder path for OUT.")
    source = sae_dir.resolve()
    if out.resolve() == source or out.resolve() in source.parents:
        raise ConfigError(f"OUT={out} holds the SAE being exported ({sae_dir}): choose a folder outside it for OUT.")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise ConfigError(
            f"OUT={out} holds files that no export wrote: choose another OUT (--overwrite replaces only a previous export)."
        )
    if not overwrite:
        raise ConfigError(f"OUT={out} holds a previous export: pass --overwrite to replace it, or choose another OUT.")
    extra = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
    if extra:
        raise ConfigError(
            f"OUT={out} holds a previous export and files it did not write ({', '.join(extra[:5])}): move them away "
            "or choose another OUT; --overwrite replaces only the export's own files."
        )


def write_export(
    out: Path, cfg_dict: dict, tensors: dict, sparsity: torch.Tensor | None, fmt: str, overwrite: bool, source: Path
) -> Path:
    """Write into a temporary sibling and rename, so OUT is never left half-written or silently replaced."""
    check_out(out, source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + (sparsity.numel() * 4 if sparsity is not None else 0)
    require_free_space(out.parent, needed + 2**20, "the export", "OUT (another disk)")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp-"))
    old = tmp.with_name(tmp.name + "-previous")
    try:
        save_file(tensors, tmp / WEIGHTS[fmt])
        (tmp / CONFIG).write_text(json.dumps(cfg_dict, indent=2))
        if sparsity is not None:
            save_file({"sparsity": sparsity.contiguous()}, tmp / SPARSITY)
        (tmp / MARKER).write_text(json.dumps({"format": fmt, "source": str(source)}))
        if out.exists():
            out.rename(old)  # the previous export (checked above), removed once the new one is in place
        tmp.rename(out)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise NoSpaceError(f"the disk of {out.parent} filled up while the export was written; OUT is unchanged.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and out.exists():
            shutil.rmtree(old, ignore_errors=True)
    return out


def export(
    run_dir: str | Path, fmt: str, out: str | Path, sparsity: bool = True, density_tokens: int = 100_000, overwrite: bool = False
) -> Path:
    if fmt not in WRITERS:
        raise ConfigError(f"--format {fmt}: choose one of {sorted(WRITERS)}.")
    sae_dir = find_sae_dir(run_dir)
    check_out(Path(out), sae_dir, overwrite)  # before any work
    sae, cfg = load_sae(sae_dir)
    cfg_dict, tensors = WRITERS[fmt](sae.state_dict(), cfg)
    log_density = None
    if fmt == SAELENS and sparsity:
        log_density, source = log_feature_density(sae, cfg, sae_dir, density_tokens)
        print(f"sparsity.safetensors: log10 feature densities from the {source}")
    return write_export(Path(out), cfg_dict, tensors, log_density, fmt, overwrite, sae_dir)
