"""One writer per directory: an exclusive lock held for the life of the process that writes there.

Two jobs on one run directory (a relaunch while a Slurm job still runs, a requeue racing a manual
restart) would both train and both write checkpoints. The lock is `flock` on `<dir>/.lock`: the
operating system releases it when the holder's process ends, however it ends (kill -9, node loss,
requeue), so a later job always gets it; a job that finds it held stops at once, naming the holder,
which the holder writes into the file (host, PID, since when).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sae.core.errors import ConfigError

LOCK_NAME = ".lock"


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"host {holder['host']}, PID {holder['pid']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not written yet)"


@contextmanager
def exclusive_dir(directory: str | Path, what: str = "this directory") -> Iterator[Path]:
    """Hold `<directory>/.lock` for the block; ConfigError naming the holder when another process has it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{directory} is in use by {_holder_text(path)}: another job is writing {what}; wait for it to end "
                "(or stop it), or choose another directory."
            ) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def exclusive_dirs(directories: list[Path], what: str) -> Iterator[None]:
    """Every directory's lock (all or none), for a job that writes several (a grouped sweep's runs)."""
    with ExitStack() as stack:
        for directory in directories:
            stack.enter_context(exclusive_dir(directory, what))
        yield
