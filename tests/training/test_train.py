"""End to end: `python train.py` on the embedded model with a tiny budget, exact resuming after a kill -9, one writer
per run directory, and `trainer.resume=false` starting over once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from support.runs import (
    REPO,
    TINY,
    assert_same_run,
    kill_after_first_checkpoint,
    kill_script_when,
    read_json,
    script_env,
    train_tiny,
)
from support.wandb_records import history, run_file

from sae import load_sae


@pytest.mark.slow
def test_train_end_to_end_loss_falls_checkpoint_loads_and_wandb_has_the_histogram(tmp_path, activation_cache_dir):
    run_dir = tmp_path / "run"
    train_tiny(run_dir, activation_cache_dir)

    rows = history(run_file(run_dir))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) >= 5
    assert losses[-1] < 0.7 * losses[0], losses

    histograms = [r for r in rows if r.get("density/log10_feature_density/_type") == "histogram"]
    assert histograms, "no density histogram in the offline W&B run"
    assert sum(histograms[-1]["density/log10_feature_density/values"]) == 576 * 2  # one entry per feature
    assert "density/dead_fraction" in histograms[-1]

    sae, cfg = load_sae(run_dir)
    assert (sae.d_in, sae.n_features) == (576, 1152)
    assert cfg["hook_name"] == "blocks.2.hook_mlp_out" and cfg["model"] == "embedded:smollm2"
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(1152), atol=1e-4)
    x = torch.randn(4, 576)
    x_hat, f = sae(x)
    assert x_hat.shape == x.shape and f.shape == (4, 1152)

    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 200 and summary["train/l0"] > 0
    assert (run_dir / "plots" / "density.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    # The same command again finds the finished run and does not train twice.
    again = train_tiny(run_dir, activation_cache_dir)
    assert "already holds a finished SAE" in again.stdout


# Resampling that really fires, at steps on both sides of the checkpoints: a strong L1 kills features;
# a 1,536-token (6-step) window, allowed by a healthy density of 2e-3; events at steps 60, 120 and 160.
RESAMPLING = [
    "logger=csv",
    "sae.l1_coefficient=0.05",
    "sae.resample.healthy_density=2e-3",
    "sae.resample.scale_to_run=false",
    "sae.resample.dead_window_tokens=1536",
    "sae.resample.at_tokens=[15360,30720,40960]",
]


@pytest.mark.slow
def test_killed_run_rerun_equals_the_uninterrupted_run(tmp_path, activation_cache_dir):
    whole = tmp_path / "whole"
    train_tiny(whole, activation_cache_dir, *RESAMPLING)
    summary = read_json(whole / "summary.json")
    assert summary["steps"] == 200 and summary["resample/events"] == 3
    assert summary["resample/total_resampled"] > 0, "the test needs resampling to fire"
    assert "eval/reconstruction_score" in summary and "density/dead_fraction" in summary

    killed = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(killed, activation_cache_dir, *RESAMPLING)
    assert 50 <= killed_at < 200
    resumed = train_tiny(killed, activation_cache_dir, *RESAMPLING)
    assert "resuming from" in resumed.stdout
    assert_same_run(killed, whole)

    # Killed after the final checkpoint but before the SAE and summary were written: the rerun trains no
    # step and still writes the full summary (evaluation and density included).
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "sae")
    again = train_tiny(killed, activation_cache_dir, *RESAMPLING)
    assert "resuming from" in again.stdout and "step 160: resampled" not in again.stdout
    assert_same_run(killed, whole)


def _wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _lock_holder(run_dir) -> dict:
    try:
        return json.loads((run_dir / ".lock").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_a_second_process_on_the_same_run_directory_stops_at_once(tmp_path, activation_cache_dir):
    """Two real train.py on one run directory: the second exits (code 2) naming the first; only one writes."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}", f"activations.cache_dir={activation_cache_dir}"]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=script_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: _lock_holder(run_dir).get("pid") == first.pid or first.poll() is not None)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, paused: the second surely starts while it runs
        second = train_tiny(run_dir, activation_cache_dir, check=False)
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        holder = _lock_holder(run_dir)
        line = [x for x in second.stderr.splitlines() if f"PID {first.pid}" in x]
        assert line and holder["host"] in line[0] and holder["since"] in line[0] and "in use" in line[0], second.stderr
        assert first.wait(timeout=900) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    again = train_tiny(run_dir, activation_cache_dir)  # the lock went with the first process
    assert "already holds a finished SAE" in again.stdout


@pytest.mark.slow
def test_resume_false_starts_over_once_and_a_rerun_resumes_the_fresh_run(tmp_path, activation_cache_dir):
    """`trainer.resume=false` under a Slurm requeue: the same command again resumes the run it started, and a kill -9
    (which leaves the lock behind only in the file) does not stop it."""
    budget = ["logger=csv"]
    fresh = tmp_path / "fresh"
    train_tiny(fresh, activation_cache_dir, *budget)

    run_dir = tmp_path / "run"
    kill_after_first_checkpoint(run_dir, activation_cache_dir, *budget)  # an earlier run's checkpoint
    last = run_dir / "checkpoints" / "last.ckpt"
    old_bytes = last.read_bytes()
    kept = last.with_name("last.ckpt.old")
    kill_script_when(
        "train.py",
        [*TINY, *budget, "trainer.resume=false", f"hydra.run.dir={run_dir}", f"activations.cache_dir={activation_cache_dir}"],
        lambda: kept.exists() and last.exists(),
    )
    assert kept.read_bytes() == old_bytes and last.exists() and not (run_dir / "summary.json").exists()
    assert "fresh_start" in read_json(run_dir / "run_config.json")

    requeued = train_tiny(run_dir, activation_cache_dir, *budget, "trainer.resume=false")
    assert "resuming from" in requeued.stdout and "starting over" not in requeued.stdout
    assert_same_run(run_dir, fresh)
    assert kept.read_bytes() == old_bytes  # the earlier run's checkpoint is still kept
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.ckpt.old"]
