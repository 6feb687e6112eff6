"""Grouped sweeps (`sweep.grouped=true`): one process reads each batch once and steps every SAE of the
group on it. The turn-taking on a counting source; then real multiruns, whose runs must equal the same
runs trained one by one (bitwise), also after the grouped job is killed and run again."""

from __future__ import annotations

import csv
import threading
import time

import pytest
import torch
from support.locks import lock_held_elsewhere
from support.runs import STREAMED, TINY, assert_same_run, kill_script_when, read_json, run_script

from sae.activations.lockstep import MembersFailed, run_in_lockstep


class CountingSource:
    """Batch s is the number s; counts how often each was made and which thread made it."""

    def __init__(self, start: int, total: int, made: list[int]):
        self.start, self.total, self.made = start, total, made

    def __iter__(self):
        for step in range(self.start, self.total):
            self.made.append(step)
            yield torch.tensor(step)


def test_members_share_each_batch_and_take_turns():
    total, starts, made = 12, [0, 4, 0], []
    running, overlaps, alive = set(), [], []
    lock = threading.Lock()

    def work(i, batches):
        batches.register(starts[i], total, lambda: CountingSource(starts[i], total, made))
        seen = []
        for batch in batches:
            with lock:
                running.add(i)
                overlaps.append(len(running))
                alive.append(len(batches._lockstep._made))
            time.sleep(0.002)  # a "training step": another member would run now if turns were not kept
            seen.append(int(batch))
            with lock:
                running.discard(i)
        return seen

    seen, batches_made = run_in_lockstep(3, work)
    assert seen == [list(range(s, total)) for s in starts]  # each its own batches, from its own start
    assert made == list(range(total)) and batches_made == total  # each batch made once, in order, from the earliest start
    assert max(overlaps) == 1  # one member at a time
    assert max(alive) <= 2  # the source never runs ahead of the slowest member


def test_a_failing_member_leaves_and_the_others_finish():
    total, made, finished = 6, [], []

    def work(i, batches):
        batches.register(0, total, lambda: CountingSource(0, total, made))
        for batch in batches:
            if i == 1 and int(batch) == 2:
                raise RuntimeError("member 1 failed")
        finished.append(i)

    with pytest.raises(MembersFailed, match="member 1 failed") as failed:
        run_in_lockstep(3, work)
    assert [i for i, _ in failed.value.failures] == [1]
    assert sorted(finished) == [0, 2] and made == list(range(total))


def test_every_failing_member_is_reported():
    total, made = 6, []

    def work(i, batches):
        batches.register(0, total, lambda: CountingSource(0, total, made))
        for batch in batches:
            if i != 1 and int(batch) == 2 + i:
                raise ValueError(f"member {i} broke at batch {int(batch)}")
        return i

    with pytest.raises(MembersFailed) as failed:
        run_in_lockstep(3, work)
    assert [(i, str(e)) for i, e in failed.value.failures] == [(0, "member 0 broke at batch 2"), (2, "member 2 broke at batch 4")]
    assert made == list(range(total))  # member 1 went on to the end


def test_a_member_that_fails_after_registering_does_not_set_where_the_stream_starts():
    """Member 0 would start at 0, but fails before its first batch: the stream starts where the others do."""
    total, made, starts = 10, [], [0, 4, 6]

    def work(i, batches):
        batches.register(starts[i], total, lambda: CountingSource(starts[i], total, made))
        if i == 0:
            raise RuntimeError("member 0 failed in its set-up")
        return [int(b) for b in batches]

    with pytest.raises(MembersFailed, match="member 0 failed"):
        run_in_lockstep(3, work)
    assert made == list(range(4, total))  # no batch made for nobody


# Two learning rates of the streamed resume test's run: resampling fires, a checkpoint every 10 of 30 steps.
LRS = "sae.lr=1e-2,5e-3"


def _multirun(sweep_dir, *extra) -> list[str]:
    return ["--multirun", *TINY, *STREAMED, "trainer.threads=1", LRS, f"hydra.sweep.dir={sweep_dir}", *extra]


def _runs(sweep_dir):
    return sorted(p.parent for p in sweep_dir.glob("*/summary.json"))


@pytest.mark.slow
def test_grouped_streamed_sweep_equals_separate_runs_after_a_kill(tmp_path, activation_cache_dir):
    separate = tmp_path / "separate"
    run_script("train.py", _multirun(separate), activation_cache_dir, timeout=1200)
    reference = _runs(separate)
    assert len(reference) == 2

    # The grouped job, killed as soon as one of its runs has a checkpoint, then run again.
    grouped = tmp_path / "grouped"
    args = [*_multirun(grouped, "sweep.grouped=true"), f"activations.cache_dir={activation_cache_dir}"]
    kill_script_when("train.py", args, lambda: bool(list(grouped.glob("*/checkpoints/last.ckpt"))))
    assert list(grouped.glob("*/checkpoints/last.ckpt")) and not _runs(grouped), "kill the job mid-run"
    ckpts = [run / "checkpoints" / "last.ckpt" for run in grouped.glob("smollm2*")]
    resume_from = min(torch.load(c, weights_only=True)["global_step"] if c.exists() else 0 for c in ckpts)

    rerun = run_script("train.py", args, timeout=1200)
    out = rerun.stdout + rerun.stderr
    assert "grouped sweep: 2 runs" in out and "resuming from" in out
    # Both runs trained on one stream: each of the 30 steps' batches made once, from the earlier checkpoint on.
    made = int(out.split(" batches made for 2 runs")[0].rsplit(" ", 1)[-1])
    assert made == 30 - resume_from

    runs = _runs(grouped)
    assert [r.name for r in runs] == [r.name for r in reference]  # same run directories as one by one
    for run, ref in zip(runs, reference, strict=True):
        assert_same_run(run, ref)
        assert (run / ".hydra" / "config.yaml").exists() and (run / "run_config.json").exists()
    with open(grouped / "report.csv") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == [r.name for r in runs]  # the group's own dir is no run


@pytest.mark.slow
def test_grouping_follows_what_decides_the_batches(tmp_path, activation_cache_dir):
    """Different seeds read the data in different orders: two groups; equal seeds: one."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", *TINY, "sae.tokens=2560", "trainer.eval_tokens=0", "logger=csv", "trainer.threads=1"]
    grid = ["sae.seed=0,1", "sae.lr=1e-3,2e-3", "sweep.grouped=true", f"hydra.sweep.dir={sweep}"]
    proc = run_script("train.py", [*args, *grid], activation_cache_dir)
    groups = sorted((sweep / ".groups").iterdir())
    assert len(groups) == 2 and proc.stdout.count("grouped sweep: 2 runs") == 2
    for group in groups:
        runs = read_json(group / "members.json")["runs"]
        seeds = {read_json(run + "/run_config.json")["identity"]["sae"]["seed"] for run in runs}
        assert len(seeds) == 1
    assert len(_runs(sweep)) == 4

    # The group job takes each of its runs' locks: a run held by another process stops the group at once, naming it.
    held = _runs(sweep)[0]
    with lock_held_elsewhere(held) as pid:
        proc = run_script("train.py", [*args, *grid], activation_cache_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert any(f"PID {pid}" in line and str(held) in line for line in proc.stderr.splitlines()), proc.stderr
