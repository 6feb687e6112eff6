"""Streamed activations (`activations.cache=false`): a run killed with SIGKILL and run again sees the same
batches and resamples from the same inputs as an uninterrupted one (compared by its weights)."""

import pytest
from support.runs import STREAMED, assert_same_run, kill_after_first_checkpoint, read_json, train_tiny


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
