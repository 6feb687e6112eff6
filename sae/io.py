"""The trained SAE on disk: `sae.safetensors` (weights, no pickle) and `cfg.json` (shape and provenance)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from sae.model import SparseAutoencoder

WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"


def save_sae(sae: SparseAutoencoder, directory: str | Path, provenance: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}
    save_file(tensors, directory / (WEIGHTS + ".tmp"))
    (directory / (WEIGHTS + ".tmp")).rename(directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({**sae.config_dict(), **provenance}, indent=2, default=str))
    return directory


def find_sae_dir(path: str | Path) -> Path:
    """Accept the SAE directory itself or a training run directory that holds one."""
    path = Path(path)
    for candidate in (path, path / "sae"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    raise FileNotFoundError(f"no {WEIGHTS} + {CONFIG} in {path} or {path / 'sae'}: point at a finished training run or its sae/ directory.")


def load_sae(path: str | Path, device: str = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Load a trained SAE; returns it with its cfg.json (model name, layer, hook, training config)."""
    directory = find_sae_dir(path)
    cfg = json.loads((directory / CONFIG).read_text())
    sae = SparseAutoencoder(cfg["d_in"], cfg["n_features"])
    sae.load_state_dict(load_file(directory / WEIGHTS))
    return sae.to(device).eval(), cfg
