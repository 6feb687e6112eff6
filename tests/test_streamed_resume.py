"""Streamed activations (`activations.cache=false`): a run killed with SIGKILL and run again sees the same
batches and resamples from the same inputs as an uninterrupted one (compared by its weights)."""

import pytest
from conftest import read_json, train_tiny
from test_train import assert_same_run, kill_after_first_checkpoint

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


@pytest.mark.slow
def test_streamed_run_killed_and_rerun_equals_the_uninterrupted_run(tmp_path, activation_cache_dir):
    whole = tmp_path / "whole"
    train_tiny(whole, activation_cache_dir, *STREAMED)
    summary = read_json(whole / "summary.json")
    assert summary["steps"] == 30 and summary["resample/events"] == 2
    assert summary["resample/total_resampled"] > 0, "the test needs resampling to fire"

    killed = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(killed, activation_cache_dir, *STREAMED)
    assert 10 <= killed_at < 30
    resumed = train_tiny(killed, activation_cache_dir, *STREAMED)
    assert "resuming from" in resumed.stdout
    assert_same_run(killed, whole)
