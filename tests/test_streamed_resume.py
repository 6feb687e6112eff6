"""Streamed activations (`activations.cache=false`): a run killed with SIGKILL and run again sees the same
batches and resamples from the same inputs as an uninterrupted one (compared by its weights)."""

import pytest

from conftest import read_json, train_tiny
from test_train import assert_same_run, kill_after_first_checkpoint

# 50 steps, a checkpoint every 10; resampling at steps 20 and 35 scores the stream's next contexts.
STREAMED = ["activations.cache=false", "activations.harvest_batch_size=8", "logger=csv", "sae.tokens=12800",
            "trainer.checkpoint_every_n_steps=10", "trainer.density_window_steps=10", "trainer.eval_tokens=0",
            "sae.l1_coefficient=0.05", "sae.resample.n_inputs=2048", "sae.resample.healthy_density=2e-3",
            "sae.resample.scale_to_run=false", "sae.resample.dead_window_tokens=1536", "sae.resample.at_tokens=[5120,8960]"]


@pytest.mark.slow
def test_streamed_run_killed_and_rerun_equals_the_uninterrupted_run(tmp_path, activation_cache_dir):
    whole = tmp_path / "whole"
    train_tiny(whole, activation_cache_dir, *STREAMED)
    summary = read_json(whole / "summary.json")
    assert summary["steps"] == 50 and summary["resample/events"] == 2
    assert summary["resample/total_resampled"] > 0, "the test needs resampling to fire"

    killed = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(killed, activation_cache_dir, *STREAMED)
    assert 10 <= killed_at < 50
    resumed = train_tiny(killed, activation_cache_dir, *STREAMED)
    assert "resuming from" in resumed.stdout
    assert_same_run(killed, whole)
