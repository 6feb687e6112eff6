"""Grouped sweeps (`sweep.grouped=true`): the runs of a multirun that would read the same activations
in the same order become one job, which reads (or harvests) each batch once and steps every SAE on it.

The sweeper (hydra_plugins/sae_grouped_sweeper) composes every job's config as Hydra would, groups
them by `shared_work_key`, and writes each run's `.hydra/` record into its own run directory, as the
job would have. Each group becomes one job of the configured launcher (sequential, local processes or
a Slurm array) with its own directory `<sweep dir>/.groups/<group>/` listing its runs; train.py trains
them there, each run keeping its directory, checkpoint, resume, W&B run and summary.

Device slots: hydra/launcher=local starts every job at once on this machine. Each job (a group, or
one SAE) first takes a free slot of trainer.devices GPUs and holds it while it trains, so on N GPUs
N one-GPU jobs train at once, one per GPU, and the others wait for a slot. Without GPUs,
`sweep.device_slots` makes the same number of CPU slots stand in for them. Each job records its slot
in `placement.json` in its directory. Under Slurm the scheduler places jobs itself (one task per GPU).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict

from sae.core.checks import require
from sae.core.files import atomic_write_json, atomic_write_text

GROUPS_DIR = ".groups"
MEMBERS = "members.json"

# Everything that decides which activations a run reads, in which order, and what the shared parts are
# (the model, the evaluation): all of these groups, and these keys of `sae`.
SHARED_GROUPS = ("model", "data", "activations", "trainer")
SHARED_SAE_KEYS = ("batch_size", "tokens", "seed")


def shared_work_key(task_cfg: DictConfig) -> str:
    """Runs with equal keys see the same batches in the same order (the data order follows `sae.seed`)."""
    resolved = OmegaConf.to_container(task_cfg, resolve=True)
    shared = {group: resolved.get(group) for group in SHARED_GROUPS}
    shared["sae"] = {key: resolved["sae"].get(key) for key in SHARED_SAE_KEYS}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _task_config(cfg: DictConfig) -> DictConfig:
    """The job's config without its `hydra` node, as the task function receives it."""
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    return task


def record_run(cfg: DictConfig, run_dir: Path, job_num: int) -> None:
    """The `.hydra/` record Hydra writes in a job's directory (config unresolved, as Hydra saves it)."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    hydra_node = copy.deepcopy(cfg.hydra)
    with open_dict(hydra_node):
        hydra_node.runtime.output_dir = str(run_dir)
        hydra_node.job.num = job_num
        hydra_node.job.id = f"{hydra_node.job.name}_{job_num}"
    OmegaConf.save(_task_config(cfg), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_node}), hydra_dir / "hydra.yaml")
    OmegaConf.save(hydra_node.overrides.task, hydra_dir / "overrides.yaml")


def plan_groups(jobs: list[list[str]], compose: Callable[[list[str]], DictConfig], sweep_dir: Path) -> list[list[str]]:
    """One job's overrides per group of `jobs` (each a job's overrides); `compose` is Hydra's config loader."""
    groups: dict[str, list[Path]] = {}
    first_overrides: dict[str, list[str]] = {}
    for num, overrides in enumerate(jobs):
        cfg = compose(overrides)
        run_dir = (Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)).absolute()
        key = shared_work_key(_task_config(cfg))
        record_run(cfg, run_dir, num)
        groups.setdefault(key, []).append(run_dir)
        first_overrides.setdefault(key, list(overrides))
    group_jobs = []
    for i, (key, run_dirs) in enumerate(groups.items()):
        name = f"group-{i}-{key}"
        if len(set(run_dirs)) != len(run_dirs):
            raise ValueError(f"two runs of {name} share a run directory; check hydra.sweep.subdir")
        atomic_write_json(sweep_dir.absolute() / GROUPS_DIR / name / MEMBERS, {"runs": [str(d) for d in run_dirs]})
        group_jobs.append([*first_overrides[key], f"hydra.sweep.subdir={GROUPS_DIR}/{name}", f"++sweep.group={name}"])
    return group_jobs


def load_members(group_dir: Path) -> list[tuple[DictConfig, Path]]:
    """(config, run directory) of every run of a group, from the records the sweeper wrote."""
    runs = json.loads((group_dir / MEMBERS).read_text())["runs"]
    return [(OmegaConf.load(Path(run) / ".hydra" / "config.yaml"), Path(run)) for run in runs]


SLOT_POLL_SECONDS = 1.0
MARKER_DAYS = 7  # a job's marker (which slot its rank 0 took) is kept this long for its other ranks


@dataclass(frozen=True)
class Placement:
    """Slot `slot` of `slots` on this machine: GPUs `gpus` (none where CPU slots stand in for them)."""

    slot: int
    slots: int
    gpus: tuple[int, ...] = ()

    @property
    def devices(self) -> list[str]:
        return [f"cuda:{g}" for g in self.gpus] or ["cpu"]


def _take(locks: list[FileLock]) -> bool:
    """All of `locks` at once, or none."""
    taken = []
    for lock in locks:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            for held in taken:
                held.release()
            return False
        taken.append(lock)
    return True


@contextmanager
def device_slot(lock_dir: Path, units: int, per_job: int, gpus: bool, job: str, leader: bool) -> Iterator[Placement]:
    """Hold `per_job` of this machine's `units` devices (GPUs, when `gpus`) for the length of the block: slot s is
    devices [s·per_job, (s+1)·per_job).

    The job's leader (its rank 0) locks a free slot's devices and writes the slot into the job's marker file; the
    job's other ranks wait for that file. A lock goes with its process, so a killed job frees its devices.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    slots = units // per_job
    marker = lock_dir / f"job-{hashlib.sha256(job.encode()).hexdigest()[:16]}.slot"

    def placement(slot: int) -> Placement:
        return Placement(slot, slots, tuple(range(slot * per_job, (slot + 1) * per_job)) if gpus else ())

    if not leader:
        while not marker.exists():
            time.sleep(SLOT_POLL_SECONDS / 4)
        yield placement(int(marker.read_text()))
        return
    for old in lock_dir.glob("job-*.slot"):  # markers of jobs long gone
        if time.time() - old.stat().st_mtime > MARKER_DAYS * 86_400:
            old.unlink(missing_ok=True)
    said = False
    while True:
        for slot in range(slots):
            block = range(slot * per_job, (slot + 1) * per_job)
            locks = [FileLock(str(lock_dir / f"device-{unit}.lock")) for unit in block]
            if not _take(locks):
                continue
            try:
                atomic_write_text(marker, str(slot))
                yield placement(slot)
            finally:
                for lock in locks:
                    lock.release()
            return
        if not said:
            print(f"every slot of {per_job} of this machine's {units} devices is taken: waiting for one", flush=True)
            said = True
        time.sleep(SLOT_POLL_SECONDS)


@contextmanager
def job_placement(cfg: DictConfig, sweep_dir: Path, job_num: int, rank: int, record_dir: Path) -> Iterator[Placement | None]:
    """The device slot of a hydra/launcher=local job for its length (None under other launchers, or on a CPU
    machine without `sweep.device_slots`); its rank 0 records it in `record_dir/placement.json`."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        yield None
        return
    devices = int(cfg.trainer.devices)
    gpus = torch.cuda.device_count() if cfg.trainer.accelerator != "cpu" else 0
    stand_ins = OmegaConf.select(cfg, "sweep.device_slots")
    if gpus:
        # The machine's GPUs: every sweep of this user on it shares them.
        units, lock_dir = gpus, Path(tempfile.gettempdir()) / f"sae-gpus-{os.getuid()}"
    elif stand_ins:
        units, lock_dir = int(stand_ins), sweep_dir / ".device_slots"
    else:
        yield None
        return
    require(
        units >= devices,
        f"trainer.devices={devices} needs {devices} devices; this machine has {units} "
        f"({'GPUs' if gpus else 'sweep.device_slots'}): lower trainer.devices.",
    )
    job = f"{os.environ.get('SUBMITIT_LOCAL_JOB_ID', os.getpid())} {sweep_dir.absolute()} #{job_num}"
    with device_slot(lock_dir, units, devices, bool(gpus), job, leader=rank == 0) as placement:
        record = {"slot": placement.slot, "slots": placement.slots, "devices": placement.devices, "job": job}
        record["started"] = time.time()
        if rank == 0:
            print(f"device slot {placement.slot} of {placement.slots}: {', '.join(placement.devices)}", flush=True)
            atomic_write_json(record_dir / "placement.json", record)
        yield placement
        if rank == 0:
            atomic_write_json(record_dir / "placement.json", {**record, "finished": time.time()})
