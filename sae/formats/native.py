"""The trained SAE on disk: `sae.safetensors` (weights, no pickle) and `cfg.json` (architecture, shape, provenance)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.architectures import ARCHITECTURES, SparseAutoencoder, architecture_of, build_sae
from sae.core.errors import ConfigError, SAEFileError
from sae.core.files import atomic_output, atomic_write_json
from sae.formats.interop import FOREIGN, detect_format, load_foreign, weights_path

WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"


def save_sae(sae: SparseAutoencoder, directory: str | Path, provenance: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Floats as float32; integer state (e.g. dead-latent counters) keeps its dtype.
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in sae.state_dict().items()
    }
    with atomic_output(directory / WEIGHTS) as tmp:
        save_file(tensors, tmp)
    atomic_write_json(directory / CONFIG, {**provenance, **sae.config_dict()})
    return directory


def find_sae_dir(path: str | Path) -> Path:
    """Accept the SAE directory itself or a training run directory that holds one."""
    path = Path(path)
    for candidate in (path, path / "sae"):
        if detect_format(candidate) is not None:
            return candidate
    raise FileNotFoundError(
        f"no {WEIGHTS} + {CONFIG} (or a SAELens/sparsify SAE) in {path} or {path / 'sae'}: "
        "point at a finished training run or its sae/ directory."
    )


def read_sae_config(directory: Path) -> dict:
    path = directory / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(f"{path} is not valid JSON ({exc}): the file is corrupt; retrain or restore it.") from None
    missing = [key for key in ("d_in", "n_features") if not isinstance(cfg, dict) or key not in cfg]
    if missing:
        raise SAEFileError(f"{path} lacks {', '.join(missing)}: not an SAE config written by save_sae; retrain or restore it.")
    return cfg


def load_sae(path: str | Path, device: str = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Load a trained SAE as its own architecture, with its cfg.json (model name, layer, hook, training config)."""
    directory = find_sae_dir(path)
    if detect_format(directory) in FOREIGN:
        return load_foreign(directory, device)
    cfg = read_sae_config(directory)
    name = architecture_of(cfg)
    if name not in ARCHITECTURES:
        raise SAEFileError(
            f"{directory / CONFIG} names architecture {name!r}, which this version does not know "
            f"(known: {', '.join(ARCHITECTURES)}): update the code or check the file."
        )
    try:
        sae = build_sae(name, int(cfg["d_in"]), int(cfg["n_features"]), cfg.get("settings"))
    except ConfigError as exc:
        raise SAEFileError(f"{directory / CONFIG}: {exc}") from None
    try:
        state = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError) as exc:
        raise SAEFileError(
            f"{directory / WEIGHTS} cannot be read ({exc}): the file is corrupt or truncated; retrain or restore it."
        ) from None
    try:
        sae.load_state_dict(state)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise SAEFileError(
            f"{directory / WEIGHTS} does not hold a {name} SAE of d_in={cfg['d_in']}, "
            f"n_features={cfg['n_features']} as {CONFIG} says ({reason})."
        ) from None
    return sae.to(device).eval(), cfg


def weights_digest(sae_dir: Path) -> str:
    """A short hash of the weights file: what evaluation parts, interpretability results and browser data are keyed by,
    so results of a retrained SAE in the same place are never reused."""
    h = hashlib.sha256()
    with open(weights_path(sae_dir), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
