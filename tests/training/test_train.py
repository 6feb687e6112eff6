"""End to end: `python train.py` on the embedded model with a tiny budget, and exact resuming after a kill -9."""

import shutil

import pytest
import torch
from support.runs import assert_same_run, kill_after_first_checkpoint, read_json, train_tiny
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
