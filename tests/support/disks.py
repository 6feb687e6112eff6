"""A real small filesystem for disk-full tests: a tmpfs of a few MB (mounting needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_filesystem(mount: Path, size: str = "3m") -> Iterator[Path]:
    """`mount` as a tmpfs of `size`, unmounted afterwards; the test is skipped where mounting is not allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}); run the tests as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path, leave: int) -> Path:
    """Another writer takes the filesystem's free space, all but `leave` bytes."""
    path = directory / "filler.bin"
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(directory).free - leave))
        f.flush()
        os.fsync(f.fileno())
    return path
