"""Grouped sweeps (`sweep.grouped=true`): the runs of a multirun that would read the same activations
in the same order become one job, which reads (or harvests) each batch once and steps every SAE on it.

The sweeper (hydra_plugins/sae_grouped_sweeper) composes every job's config as Hydra would, groups
them by `shared_work_key`, and writes each run's `.hydra/` record into its own run directory, as the
job would have. Each group becomes one job of the configured launcher (sequential, local processes or
a Slurm array) with its own directory `<sweep dir>/.groups/<group>/` listing its runs; train.py trains
them there, each run keeping its directory, checkpoint, resume, W&B run and summary.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from sae.core.files import atomic_write_json

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
