"""Atomic writes and strict JSON, for every writer of results.

A reader (a rerun, a sweep report, a browser) must never see a half-written file, so results are
written to a temporary file beside the target and renamed over it. JSON has no NaN: an undefined
number (e.g. a correlation over a constant series) is written as null.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae.core.errors import NoSpaceError


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an error,
    removed when it fails. Readers see the old file or the new one, never a mixture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, flushed to disk before the rename."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


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


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def existing_parent(path: str | Path) -> Path:
    """`path` itself or its nearest ancestor that exists (where a new file under `path` would land)."""
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def require_free_space(path: str | Path, needed: int, what: str, setting: str) -> None:
    """Refuse, before writing, when the filesystem of `path` has less than `needed` bytes free."""
    free = shutil.disk_usage(existing_parent(path)).free
    if needed > free:
        raise NoSpaceError(
            f"{what}: {human_bytes(needed)} needed, {human_bytes(free)} free on {existing_parent(path)}; "
            f"free some space or change {setting}."
        )


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a write that ran out of space (numpy's short write carries no errno, only its counts)."""
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "requested and" in str(exc))
