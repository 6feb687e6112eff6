"""One SAE on two CPU processes (Lightning's DDP strategy, gloo): `python train.py trainer.devices=2`.

It trains what one process trains (to float32 rounding: each rank sums half the batch), resampling and
density statistics included; a run killed with its whole process group resumes to the bit; and launches
that cannot work are refused at start-up in one line.
"""

from __future__ import annotations

import pytest
import torch
from support.ddp import assert_trained_alike
from support.runs import STREAMED, assert_same_run, kill_after_first_checkpoint, read_json, run_script, train_tiny

# 100 steps of 256 tokens; a strong L1 kills features, a 2-step (512-token) dead window (allowed by a healthy density
# of 1e-2) lets resampling fire at steps 40 and 80, on both sides of the checkpoint at step 50; density windows close
# at 50 and 100.
DDP = [
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.threads=1",
    "sae.lr=1e-3",
    "sae.tokens=25600",
    "sae.l1_coefficient=0.05",
    "sae.resample.healthy_density=1e-2",
    "sae.resample.scale_to_run=false",
    "sae.resample.dead_window_tokens=512",
    "sae.resample.at_tokens=[10240,20480]",
]
TWO = [*DDP, "trainer.devices=2"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, activation_cache_dir):
    run_dir = tmp_path_factory.mktemp("ddp") / "two"
    train_tiny(run_dir, activation_cache_dir, *TWO)
    return run_dir


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path, activation_cache_dir, two_processes):
    one = tmp_path / "one"
    train_tiny(one, activation_cache_dir, *DDP, "trainer.devices=1")

    assert_trained_alike(two_processes, one, lr=1e-3, steps=100)
    a, b = read_json(two_processes / "summary.json"), read_json(one / "summary.json")
    assert a["steps"] == b["steps"] == 100 and a["tokens"] == b["tokens"] == 25600
    assert a["resample/events"] == b["resample/events"] == 2
    assert a["resample/total_resampled"] == b["resample/total_resampled"] > 0, "the test needs resampling to fire"
    for key in ("density/dead_fraction", "density/ultralow_fraction", "density/density_tokens"):
        assert a[key] == b[key], key
    assert a["train/l0"] == pytest.approx(b["train/l0"], rel=1e-3)  # the whole batch's L0, not one rank's
    for key in ("eval/reconstruction_score", "eval/l0", "eval/explained_variance"):  # rank 0 evaluated
        assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key

    # Rank 0 alone wrote the run's files: one CSV log, one density plot per window.
    assert sorted(p.name for p in (two_processes / "plots").iterdir()) == ["density.png", "density_step0000050.png"]
    assert len(list(two_processes.glob("csv/**/metrics.csv"))) == 1


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(tmp_path, activation_cache_dir, two_processes):
    killed = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(killed, activation_cache_dir, *TWO)  # SIGKILL to the process group
    assert 50 <= killed_at < 100
    resumed = train_tiny(killed, activation_cache_dir, *TWO)
    assert resumed.stdout.count("resuming from") == 1  # rank 0 says so, once
    assert_same_run(killed, two_processes)  # bitwise weights, the same summary (resampling, density, evaluation)
    assert torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 100


@pytest.mark.slow
def test_streamed_two_processes_share_the_harvest_train_as_one_and_resume_exactly(tmp_path, activation_cache_dir):
    """Streamed (activations.cache=false): each rank runs the model on every other model batch, and both feed
    the same shuffle buffer with the whole stream; resampling (steps 15, 25) scores the stream on rank 0."""
    cpu = ["trainer.accelerator=cpu", "trainer.threads=1"]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    train_tiny(one, activation_cache_dir, *STREAMED, *cpu)
    train_tiny(two, activation_cache_dir, *STREAMED, *cpu, "trainer.devices=2")
    assert_trained_alike(two, one, lr=1e-2, steps=30)  # STREAMED's lr and steps
    a, b = read_json(two / "summary.json"), read_json(one / "summary.json")
    assert a["resample/events"] == b["resample/events"] == 2
    assert a["resample/total_resampled"] == b["resample/total_resampled"] > 0
    assert a["density/dead_fraction"] == b["density/dead_fraction"]

    killed_at = kill_after_first_checkpoint(killed, activation_cache_dir, *STREAMED, *cpu, "trainer.devices=2")
    assert 10 <= killed_at < 30
    train_tiny(killed, activation_cache_dir, *STREAMED, *cpu, "trainer.devices=2")
    assert_same_run(killed, two)


def test_a_batch_that_does_not_split_between_the_processes_is_refused(tmp_path):
    proc = run_script("train.py", [f"hydra.run.dir={tmp_path}", "trainer.devices=3", "sae.batch_size=256"], check=False)
    assert proc.returncode == 2
    assert "sae.batch_size=256 does not split evenly between 3 processes" in proc.stderr


def test_a_multirun_on_hydras_default_launcher_is_refused(tmp_path):
    args = ["--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=2", "sae.seed=0,1"]
    proc = run_script("train.py", args, check=False)
    assert proc.returncode == 2
    assert "needs hydra/launcher=local or hydra/launcher=slurm" in proc.stderr


def test_a_grouped_sweep_on_several_devices_per_group_is_refused(tmp_path):
    args = ["--multirun", "+sweep=smoke", "sweep.grouped=true", "trainer.devices=2", f"hydra.sweep.dir={tmp_path}"]
    proc = run_script("train.py", args, check=False)
    assert proc.returncode == 2
    assert "sweep.grouped=true trains a group's SAEs side by side in one process" in proc.stderr
