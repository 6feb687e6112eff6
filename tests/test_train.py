"""End to end: `python train.py` on the embedded model with a tiny budget, and resuming after a kill."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, read_json, script_env, train_tiny
from sae import load_sae
from wandb_records import history, run_file


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


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint_without_losing_steps(tmp_path, activation_cache_dir):
    run_dir = tmp_path / "run"
    args = [*TINY, "sae.tokens=64000", "trainer.checkpoint_every_n_steps=100", "logger=csv",
            f"hydra.run.dir={run_dir}", f"activations.cache_dir={activation_cache_dir}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint file be complete
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 100 <= killed_at < 250
    assert not (run_dir / "summary.json").exists()

    resumed = train_tiny(run_dir, activation_cache_dir, "sae.tokens=64000", "trainer.checkpoint_every_n_steps=100", "logger=csv")
    assert "resuming from" in resumed.stdout
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 250
    # The resumed process started at the checkpoint, not at step 0. metrics.csv is appended to, so the
    # resumed process's rows are those after the last point where the logged step goes backwards.
    import csv

    steps = [int(float(r["step"])) for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("train/loss")]
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    resumed_steps = steps[restarts[-1]:] if restarts else steps
    assert min(resumed_steps) >= killed_at and max(resumed_steps) >= 240
