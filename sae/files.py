"""Small file helpers shared by every writer of results: atomic writes and strict JSON.

A reader (a rerun, a sweep report, a dashboard) must never see a half-written file, so results are
written to a temporary file beside the target and renamed over it. JSON has no NaN: an undefined
number (e.g. a correlation over a constant series) is written as null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the new one, never a mixture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def finite_or_none(value: Any) -> Any:
    """NaN and ±inf become None, recursively through dicts, lists and tuples (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def atomic_write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Strict JSON (non-finite numbers as null), written atomically."""
    return atomic_write_text(path, json.dumps(finite_or_none(value), indent=indent, allow_nan=False, default=str))
