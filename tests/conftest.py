"""Shared test helpers: real Hydra runs of train.py / evaluate.py on the embedded model, kept tiny.

The embedded model is converted once into the user cache (~/.cache/sae/models, or $SAE_CACHE_DIR);
activation caches go to a per-session temporary directory so tests never read a user's cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small enough for 2 CPU cores: an early layer, short contexts, a ~20k-token harvest.
TINY = [
    "model.layer=2",
    "data.context_length=64",
    "activations.n_tokens=20000",
    "activations.buffer_tokens=8192",
    "activations.shard_tokens=8192",
    "sae.expansion=2",
    "sae.batch_size=256",
    "sae.tokens=51200",
    "trainer.log_every_n_steps=10",
    "trainer.density_window_steps=50",
    "trainer.checkpoint_every_n_steps=50",
    "trainer.progress_bar=false",
    "trainer.eval_tokens=512",
]


@pytest.fixture(scope="session")
def activation_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("activation-cache")


def script_env(activation_cache_dir: Path | None = None) -> dict:
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("WANDB_API_KEY", None)
    # A W&B run in the test process itself exports its service's address; a script that inherited it would
    # share that service (and its run IDs) with every other script of the session. Each starts its own, as a user's.
    env.pop("WANDB_SERVICE", None)
    return env


def run_script(
    script: str,
    overrides: list[str],
    activation_cache_dir: Path | None = None,
    check: bool = True,
    timeout: float = 900,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run `python <script> <overrides>` from the repo root, as a user would."""
    args = list(overrides)
    if activation_cache_dir is not None:
        args.append(f"activations.cache_dir={activation_cache_dir}")
    # Its own process group, so a timeout also ends the jobs it started (e.g. submitit_local workers).
    with subprocess.Popen(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or script_env(),
        start_new_session=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            raise
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
        )
    return proc


def kill_script_when(script: str, args: list[str], ready, timeout: float = 900) -> None:
    """Start `python <script> <args>` and SIGKILL it (and its children) as soon as `ready()` is true."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def train_tiny(run_dir: Path, activation_cache_dir: Path, *extra: str, check: bool = True, env: dict | None = None):
    return run_script("train.py", [*TINY, f"hydra.run.dir={run_dir}", *extra], activation_cache_dir, check=check, env=env)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
