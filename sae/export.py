"""Export a trained SAE to SAELens's or sparsify's on-disk format, optionally uploading it to the Hugging Face Hub.

    python -m sae.export RUN_DIR --format saelens OUT [--push-to-hub USER/REPO]

SAELens also reads `sparsity.safetensors` (log10 feature densities, for dashboards and Neuronpedia): it comes
from the run's evaluation (`evaluate.py`'s density part, on training activations) when that was computed for
these weights, else from the run's activation cache (`--density-tokens` of them, harvested if missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae.config import ActivationsConfig, ConfigError, DataConfig, ModelConfig, to_objects
from sae.formats import CONFIG, SAELENS, SPARSIFY, SPARSITY, WEIGHTS, to_saelens, to_sparsify
from sae.metrics import log10_density

WRITERS = {SAELENS: to_saelens, SPARSIFY: to_sparsify}


def density_from_evaluation(sae_dir: Path) -> tuple[torch.Tensor, int] | None:
    """Fire counts from `eval/parts/density.json` of the run, if it was computed for these exact weights."""
    from sae.eval_metrics import weights_digest

    run_dir = sae_dir.parent if sae_dir.name == "sae" else sae_dir
    part = run_dir / "eval" / "parts" / "density.json"
    if not part.is_file():
        return None
    stored = json.loads(part.read_text())
    if stored.get("settings", {}).get("sae_weights") != weights_digest(sae_dir):
        return None
    return torch.tensor(stored["result"]["fire_counts"]), int(stored["result"]["tokens"])


def run_activation_cache(cfg: dict):
    """The activation cache the SAE was trained from (harvested again if it is gone)."""
    from omegaconf import OmegaConf

    from sae.activations import build_cache
    from sae.lm import lazy_bridge

    train = cfg.get("train_config")
    if not train:
        raise ConfigError(
            "the SAE's cfg.json has no train_config, so its activations cannot be found: "
            "run evaluate.py on it first, or export with --no-sparsity."
        )
    model_cfg, data_cfg, act_cfg = (
        to_objects(OmegaConf.merge(OmegaConf.structured(cls), train[name]), cls)
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("activations", ActivationsConfig))
    )
    return build_cache(lazy_bridge(model_cfg), model_cfg, data_cfg, act_cfg, seed=int(train["sae"]["seed"]))


def density_from_cache(sae, cfg: dict, n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Fire counts over `n_tokens` rows of the run's activation cache, drawn as evaluate.py draws them."""
    from sae.evaluation import activation_stats

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
    from sae.io import find_sae_dir, load_sae

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


def push_to_hub(folder: Path, repo_id: str, path_in_repo: str | None = None, private: bool = False):
    """Upload the exported folder; the token comes from HF_TOKEN or `hf auth login` and is never written."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise ConfigError("no Hugging Face token: run `hf auth login` or export HF_TOKEN=..., then push again.")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        path_in_repo=path_in_repo,
        commit_message=f"Add SAE {path_in_repo or ''}".strip(),
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m sae.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run directory or its sae/ directory")
    parser.add_argument("out", help="the folder to write (must be absent or empty unless --overwrite)")
    parser.add_argument("--format", required=True, choices=sorted(WRITERS))
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload OUT to this Hugging Face model repo")
    parser.add_argument("--path-in-repo", help="folder inside the repo (default: the SAE's hook name)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--density-tokens",
        type=int,
        default=100_000,
        help="tokens of the activation cache for sparsity.safetensors when no evaluation has it",
    )
    parser.add_argument("--no-sparsity", action="store_true", help="write no sparsity.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    try:
        out = export(
            args.run_dir,
            args.format,
            args.out,
            sparsity=not args.no_sparsity,
            density_tokens=args.density_tokens,
            overwrite=args.overwrite,
        )
        print(f"wrote {args.format} SAE to {out}")
        if args.push_to_hub:
            path_in_repo = args.path_in_repo or json.loads((out / CONFIG).read_text()).get("hook_name")
            push_to_hub(out, args.push_to_hub, path_in_repo, args.private)
            print(f"uploaded {out} to https://huggingface.co/{args.push_to_hub} ({path_in_repo or '/'})")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return out


if __name__ == "__main__":
    main()
