"""Real Hydra runs of train.py / evaluate.py on the embedded model, kept tiny, and how to compare them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae.formats.native import WEIGHTS

REPO = Path(__file__).resolve().parents[2]

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


def kill_after_first_checkpoint(run_dir, activation_cache_dir, *extra: str) -> int:
    """Start the run, SIGKILL it as soon as its first checkpoint exists; return the checkpoint's step."""
    args = [*TINY, *extra, f"hydra.run.dir={run_dir}", f"activations.cache_dir={activation_cache_dir}"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    kill_script_when("train.py", args, ckpt.exists)
    assert ckpt.exists(), "the run never wrote a checkpoint"
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def assert_same_run(run_dir, reference) -> None:
    """Bitwise-equal weights and the same summary.json except its path."""
    ours, theirs = load_file(run_dir / "sae" / WEIGHTS), load_file(reference / "sae" / WEIGHTS)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs from the uninterrupted run"
    a, b = read_json(run_dir / "summary.json"), read_json(reference / "summary.json")
    a.pop("run_dir"), b.pop("run_dir")
    assert a == b


# 30 steps, a checkpoint every 10; a strong L1, a high lr and a 2-step (512-token) window make resampling at
# steps 15 and 25 fire, scoring the stream's next contexts.
STREAMED = [
    "activations.cache=false",
    "activations.harvest_batch_size=8",
    "activations.buffer_tokens=2048",
    "logger=csv",
    "sae.tokens=7680",
    "trainer.checkpoint_every_n_steps=10",
    "trainer.density_window_steps=10",
    "trainer.eval_tokens=0",
    "sae.l1_coefficient=0.5",
    "sae.lr=1e-2",
    "sae.resample.n_inputs=2048",
    "sae.resample.healthy_density=1e-2",
    "sae.resample.scale_to_run=false",
    "sae.resample.dead_window_tokens=512",
    "sae.resample.at_tokens=[3840,6400]",
]
