"""What makes two training runs the same run: the training-relevant part of the resolved config.

The run directory's name carries a readable label with exact values plus a short hash of this
identity, so no two distinct configurations share a directory. `run_config.json` in the run
directory records the identity when the run starts; resuming from `last.ckpt` or skipping a
finished run first checks that the requested identity equals the stored one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from sae.core.errors import ConfigError
from sae.core.files import atomic_write_text

RUN_CONFIG = "run_config.json"

# Groups whose settings change what is trained. Everything in them counts, except these keys,
# which only say where or how fast things run, or how they are named.
IDENTITY_GROUPS = ("model", "data", "activations", "sae")
NOT_IDENTITY = {
    "model": {"alias", "device"},
    "data": {"alias"},
    "activations": {"cache_dir", "harvest_batch_size"},
    "sae": {"sparse_kernel"},  # how the products are computed, not what: the same gradients to float rounding
}


def training_identity(cfg: Any) -> dict:
    """The training-relevant settings of a resolved config (a dict or a DictConfig)."""
    identity = {}
    for group in IDENTITY_GROUPS:
        node = cfg.get(group) if hasattr(cfg, "get") else None
        if isinstance(node, DictConfig):
            identity[group] = {k: _resolved(node, k) for k in node if k not in NOT_IDENTITY[group]}
        elif isinstance(node, dict):
            identity[group] = {k: v for k, v in node.items() if k not in NOT_IDENTITY[group]}
    return identity


def _resolved(node: DictConfig, key: str) -> Any:
    """One setting, resolved on its own: the settings left out may name the run (`cache_dir: /x/${run_name}`),
    and resolving them here would recurse."""
    if OmegaConf.is_missing(node, key):
        return MISSING
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def identity_hash(identity: dict, length: int = 8) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def number(value: Any) -> str:
    """Exact, short: 2.5e-4, 1e-3, 5, 0.9 (never rounded, so distinct values give distinct names)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):  # refused at start-up (sae.core.checks.require_finite); the name must not crash first
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if abs(value) < 1e-2 or abs(value) >= 1e6:
        mantissa, exponent = f"{value:.15e}".split("e")
        mantissa = f"{float(mantissa):.12g}"
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.12g}"


def tokens_label(value: Any) -> str:
    """5M, 2B, 51.2k in run names; exact (1.234567M, never rounded)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    value = int(value)
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            return f"{value / size:.12g}{unit}"
    return str(value)


def run_label(sae: dict) -> str:
    """Readable part of the run name: recipe (and architecture), size, sparsity knob, lr, budget, seed."""
    parts = [str(sae.get("recipe", "sae"))]
    if sae.get("architecture") not in (None, "", sae.get("recipe")):
        parts.append(str(sae["architecture"]))
    parts.append(f"x{sae.get('expansion')}")
    if sae.get("k") is not None:
        parts.append(f"k={sae['k']}")
    if sae.get("l1_coefficient") is not None:
        parts.append(f"l1={number(sae['l1_coefficient'])}")
    parts.append(f"lr={number(sae.get('lr'))}")
    parts.append(f"tok={tokens_label(sae.get('tokens', 0))}")
    parts.append(f"seed={sae.get('seed', 0)}")
    return "_".join(parts)


def run_name(cfg: Any) -> str:
    """`<readable label>-<hash of the training identity>`, e.g. anthropic_2023_x8_l1=3e-4_..._seed=0-1a2b3c4d."""
    identity = training_identity(cfg)
    return f"{run_label(identity.get('sae', {}))}-{identity_hash(identity)}"


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def differing_fields(stored: dict, requested: dict) -> list[str]:
    a, b = _flatten(stored), _flatten(requested)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def write_identity(run_dir: Path, identity: dict) -> Path:
    """Atomically: a reader never sees a half-written record."""
    record = {"hash": identity_hash(identity), "identity": identity}
    return atomic_write_text(run_dir / RUN_CONFIG, json.dumps(record, indent=2, sort_keys=True, default=str))


def fresh_start(run_dir: Path) -> str | None:
    """When `trainer.resume=false` started this run over (recorded in run_config.json), else None."""
    try:
        return json.loads((run_dir / RUN_CONFIG).read_text()).get("fresh_start", {}).get("at")
    except (OSError, ValueError, AttributeError):
        return None


def record_fresh_start(run_dir: Path) -> None:
    """Mark the run as started over: its checkpoints from now on are the fresh run's (resumed by a rerun)."""
    path = run_dir / RUN_CONFIG
    record = json.loads(path.read_text())
    record["fresh_start"] = {"at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "pid": os.getpid()}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str))


def claim_run_dir(run_dir: Path, identity: dict, has_progress: bool) -> None:
    """Record the identity in a new run directory, or check it against the stored one.

    `has_progress`: the directory holds a checkpoint or a finished SAE that would be resumed or skipped.
    """
    path = run_dir / RUN_CONFIG
    if not path.exists():
        if has_progress:
            raise ConfigError(
                f"{run_dir} holds a checkpoint or a trained SAE but no {RUN_CONFIG}, so its training config cannot be "
                "checked: move that directory away (or choose another hydra.run.dir) to train this config."
            )
        write_identity(run_dir, identity)
        return
    try:
        stored = json.loads(path.read_text())["identity"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}): move the run directory away to train this config.") from None
    # Through JSON both ways, so tuples/lists and ints/floats compare as stored.
    requested = json.loads(json.dumps(identity, default=str))
    diff = differing_fields(stored, requested)
    if diff:
        details = ", ".join(f"{k} (stored {_get(stored, k)!r}, requested {_get(requested, k)!r})" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise ConfigError(
            f"{run_dir} belongs to a different training config: {details}{more}. It is never resumed or reused across "
            "configs: choose another hydra.run.dir, or move that directory away."
        )


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def check_checkpoint(path: Path) -> None:
    """A truncated or overwritten `last.ckpt` stops the run with a message, not a loader traceback.

    torch saves a zip archive with a CRC per entry, so reading it through once finds both a cut-off
    file and flipped bytes without unpickling anything.
    """
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                problem = f"entry {bad} fails its checksum"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        problem = str(exc) or type(exc).__name__
    if problem:
        raise ConfigError(
            f"checkpoint {path} is corrupt ({problem}): add trainer.resume=false to start this run over "
            f"(the file is kept as {path.name}.old)."
        )
