"""A sweep through hydra-submitit-launcher's Slurm launcher on a real single-node Slurm cluster.

The cluster (tests/support/slurm_cluster.py) is started by a fixture and stopped by PID afterwards; it needs
root and Debian's packages: apt-get install -y slurm-wlm munge slurmdbd mariadb-server. One job gets,
mid-run, the signal Slurm sends before a time limit (submitit asks for SIGUSR2 with `--signal`): the
launcher's checkpoint() resubmits the same job, Slurm requeues it, and the requeued job trains on
in the same run directory from its last.ckpt.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmJobEnvironment
from support.runs import REPO, read_json, script_env
from support.slurm_cluster import LocalSlurm, missing_programs

pytestmark = pytest.mark.slow

STEPS = 300  # sae.tokens / sae.batch_size below: long enough to be preempted between checkpoints


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip(
            "Slurm is not installed (`bash scripts/setup.sh --test` installs it as root: "
            "apt-get install -y slurm-wlm munge slurmdbd mariadb-server)"
        )
    missing = missing_programs()
    assert not missing, (
        f"Slurm is partly installed; missing {missing}: apt-get install -y slurm-wlm munge slurmdbd mariadb-server"
    )
    assert os.geteuid() == 0, "the Slurm test starts munged, MariaDB and the Slurm daemons, which needs root"
    cluster = LocalSlurm().start()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float, pattern: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not (any(path.glob(pattern)) if pattern else path.exists()):
        assert proc.poll() is None, f"the sweep ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f}s"
        time.sleep(0.5)


def _sweep_signalled_mid_run(slurm, tmp_path, *extra: str) -> tuple[Path, Path, Path, str]:
    """The smoke sweep (two runs) through Slurm; array task 0 gets, once run 0 has written its first
    checkpoint, the signal Slurm sends before a time limit. Returns (sweep dir, cache dir, run 0, Slurm job id)."""
    sweep_dir, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    args = [
        sys.executable,
        "train.py",
        "--multirun",
        "+sweep=smoke",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=null",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.max_num_timeout=2",
        "sae.expansion=1",
        "sae.l1_coefficient=3e-4,3e-3",
        f"sae.tokens={STEPS * 256}",
        "trainer.checkpoint_every_n_steps=25",
        "logger=csv",
        f"hydra.sweep.dir={sweep_dir}",
        f"activations.cache_dir={cache_dir}",
        *extra,
    ]
    log_path = tmp_path / "sweep.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env={**script_env(), **slurm.env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            # The run directory ends in a hash of the training config: found by its readable part.
            pattern = "smollm2-L2-hook_mlp_out_anthropic_2023_relu_x1_l1=3e-4_lr=1e-4_tok=76.8k_seed=0-*/checkpoints/last.ckpt"
            _wait_for(sweep_dir, proc, timeout=600, pattern=pattern)
            run0 = next(sweep_dir.glob(pattern)).parent.parent
            # Task 0 of the array, or the job itself when the sweep is one job (submitit submits no array of one).
            queue = subprocess.run(["squeue", "-h", "-o", "%F %i"], capture_output=True, text=True, env=slurm.env).stdout
            job = next(i for a, i in (line.split() for line in queue.splitlines()) if i in (f"{a}_0", a))
            subprocess.run(["scancel", f"--signal={SlurmJobEnvironment.USR_SIG}", job], check=True, env=slurm.env)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"{output[-4000:]}\n{slurm.logs()[-3000:]}"
    history = slurm.final_states(job)  # accounting lags the job's end: waits (60 s at most) for it to say so
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    return sweep_dir, cache_dir, run0, job


def _assert_finished_report(sweep_dir: Path) -> None:
    with open(sweep_dir / "report.csv") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows) == 2
    for path, row in rows.items():
        summary = read_json(sweep_dir / path / "summary.json")
        assert summary["steps"] == STEPS and row["status"] == "finished"
        assert float(row["l0"]) > 0 and 0 < float(row["explained_variance"]) <= 1


def test_slurm_sweep_runs_requeues_and_resumes(slurm, tmp_path):
    sweep_dir, cache_dir, run0, job = _sweep_signalled_mid_run(slurm, tmp_path)
    # Slurm requeued job 0 once (submitit's handler, not Lightning's own SLURM requeue, which would leave an
    # hpc_ckpt_*.ckpt); its second attempt resumed from the checkpoint in the same directory.
    job0_logs = "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit").glob(f"{job}*/*_log.*"))
    assert "Job has timed out" in job0_logs and "remaining timeouts)" in job0_logs  # submitit requeued it
    assert f"resuming from {run0 / 'checkpoints' / 'last.ckpt'}" in job0_logs
    assert not list(run0.glob("hpc_ckpt_*.ckpt"))

    _assert_finished_report(sweep_dir)
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 1  # both jobs trained from one harvest


def test_slurm_grouped_sweep_is_one_task_that_requeues_and_resumes_every_run(slurm, tmp_path):
    """`sweep.grouped=true`: both runs in one Slurm job; signalled, it requeues and each run resumes from its own checkpoint."""
    sweep_dir, _, run0, job = _sweep_signalled_mid_run(slurm, tmp_path, "sweep.grouped=true")
    jobs = [p.name for p in (sweep_dir / ".submitit").iterdir() if not p.name.startswith(".")]
    assert jobs == [job]  # one Slurm job for the group
    logs = "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit" / job).glob("*_log.*"))
    assert "grouped sweep: 2 runs" in logs and "Job has timed out" in logs
    assert f"resuming from {run0 / 'checkpoints' / 'last.ckpt'}" in logs
    assert logs.count("resuming from") == 2  # the other run had its own checkpoint, too
    _assert_finished_report(sweep_dir)
