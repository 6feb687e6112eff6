"""Another process that holds a directory's lock (sae.core.locks), as a second job on the same directory would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.runs import REPO, script_env

HOLD = """
import sys, time
from sae.core.locks import exclusive_dir
with exclusive_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@contextmanager
def lock_held_elsewhere(directory: Path) -> Iterator[int]:
    """The PID of a live process holding `directory`'s lock for the block; killed afterwards."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], cwd=REPO, env=script_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
