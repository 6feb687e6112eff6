"""Device slots of hydra/launcher=local jobs (sae/sweeps/grouping.py): real processes take turns on a machine's
devices, each job's other ranks find the slot its rank 0 took, and a killed job frees its devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.runs import REPO

# One job's process: holds its slot for `hold` seconds and prints what it got and when.
HOLD = """
import json, sys, time
from pathlib import Path
from sae.sweeps.grouping import device_slot
lock_dir, units, per_job, job, leader, hold = sys.argv[1:]
with device_slot(Path(lock_dir), int(units), int(per_job), True, job, leader == "1") as placement:
    start = time.time()
    print("holding", flush=True)
    time.sleep(float(hold))
    print(json.dumps({"job": job, "slot": placement.slot, "gpus": list(placement.gpus), "start": start, "end": time.time()}))
"""


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _end_every_process():
    """A test that fails leaves no job waiting for a slot."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(lock_dir: Path, units: int, per_job: int, job: str, leader: bool = True, hold: float = 1.5) -> subprocess.Popen:
    args = [sys.executable, "-c", HOLD, str(lock_dir), str(units), str(per_job), job, "1" if leader else "0", str(hold)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    STARTED.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
    return STARTED[-1]


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def overlap(a: dict, b: dict) -> bool:
    return max(a["start"], b["start"]) < min(a["end"], b["end"])


def test_jobs_take_distinct_devices_and_wait_when_all_are_taken(tmp_path):
    # Two GPUs, one each: three jobs started together; two run at once on distinct GPUs, the third waits.
    jobs = [start(tmp_path, 2, 1, f"job{i}") for i in range(3)]
    got = sorted((result(p) for p in jobs), key=lambda r: r["start"])
    assert {got[0]["slot"], got[1]["slot"]} == {0, 1} and overlap(got[0], got[1])
    assert not overlap(got[2], got[0]) or not overlap(got[2], got[1])  # it ran once one of them was done
    assert got[2]["start"] >= min(got[0]["end"], got[1]["end"]) - 0.05


def test_a_jobs_other_ranks_use_the_slot_its_rank_0_took(tmp_path):
    # Four GPUs, two per job: job A takes GPUs 0-1, job B (its rank 1 started first) GPUs 2-3.
    a = start(tmp_path, 4, 2, "A", hold=3)
    time.sleep(1)
    b1 = start(tmp_path, 4, 2, "B", leader=False, hold=0.1)
    b0 = start(tmp_path, 4, 2, "B", hold=0.5)
    ra, rb0, rb1 = result(a), result(b0), result(b1)
    assert ra["gpus"] == [0, 1] and rb0["gpus"] == rb1["gpus"] == [2, 3]


def test_a_killed_job_frees_its_devices(tmp_path):
    holder = start(tmp_path, 1, 1, "killed", hold=60)
    assert holder.stdout.readline().strip() == "holding"  # it holds the only device
    holder.kill()
    holder.wait()
    assert result(start(tmp_path, 1, 1, "next", hold=0.1))["slot"] == 0
