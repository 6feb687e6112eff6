"""Train a sparse autoencoder on one hook of a language model.

    python train.py                                  # embedded default: SmolLM2-135M + mixed text, offline
    python train.py model=distilgpt2 data=pile       # the reference set-up (needs the internet)
    python train.py --multirun +sweep=smoke          # a sweep (see sweeps/)

Running the same command again resumes an interrupted run from its last.ckpt, and skips a
finished one. One job writes a run directory at a time: a second one stops at once, naming the
first (sae/core/locks.py). The run directory gets `sae/` (sae.safetensors + cfg.json), `checkpoints/`,
`plots/`, `summary.json` and the W&B run.

    python train.py trainer.devices=4                # one SAE on 4 GPUs (DDP; each gets 1/4 of every batch)
    python train.py --multirun hydra/launcher=slurm trainer.devices=8 trainer.num_nodes=2   # 16 GPUs, 2 nodes

Under DDP every process runs this script; global rank 0 alone claims the run directory and writes
the run's files (sae/, summary.json, plots, W&B), the others train and read.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from callbacks import build_callbacks
from sae.activations.batches import Shard
from sae.activations.datamodule import ActivationDataModule
from sae.activations.lockstep import MemberBatches, MembersFailed, run_in_lockstep
from sae.core.checks import output_dir_problem, require, to_objects
from sae.core.errors import ConfigError
from sae.core.files import require_free_space
from sae.core.locks import exclusive_dirs
from sae.core.tracking import build_logger, finish
from sae.formats.native import save_sae
from sae.lm.bridge import lazy_bridge
from sae.sweeps.grouping import job_placement, load_members
from sae.training.cluster import TorchThreads, cluster_plugins, leave_process_group, strategy
from sae.training.config import TrainConfig, register_configs
from sae.training.module import SAETrainingModule
from sae.training.plan import run_plan
from sae.training.ranks import global_rank, is_global_zero, local_rank
from sae.training.run import checkpoint_bytes, finished_summary, initial_sae, provenance, start_up_checks, write_summary

register_configs()


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resolved: dict,
    bridge=None,
    lockstep: MemberBatches | None = None,
    gpus: list[int] | None = None,
) -> dict | None:
    """One run. In a grouped sweep the group's runs share `bridge` (the model) and `lockstep` (the batches).
    `gpus`: the GPUs of this job's device slot (hydra/launcher=local); by default the first trainer.devices.

    Under DDP, every rank calls this; rank 0 returns the summary, the others None."""
    processes = cfg.trainer.processes
    writer = is_global_zero(cfg.trainer.devices)  # before fit, from the launcher's variables
    Shard(0, processes).check(cfg.sae.batch_size)  # at start-up, before any process is started
    last = start_up_checks(cfg, run_dir, resolved, writer=writer)
    done = finished_summary(run_dir)
    if done is not None:
        if writer:
            print(f"{run_dir} already holds a finished SAE; skipping (delete the directory to train again).")
        return done
    L.seed_everything(cfg.sae.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    if writer:
        print(run_plan(cfg).line())
    if (gpus or processes > 1) and cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        # This rank's GPU, for the language model too (harvest, evaluation): the one Lightning gives it.
        torch.cuda.set_device(gpus[local_rank()] if gpus else local_rank())

    bridge = bridge or lazy_bridge(cfg.model)
    datamodule = ActivationDataModule(
        cfg.model, cfg.data, cfg.activations, cfg.sae.batch_size, cfg.sae.total_steps, cfg.sae.seed, bridge, lockstep
    )
    callbacks = build_callbacks(cfg, run_dir, bridge, datamodule, lockstep.shared if lockstep else None)
    callbacks.append(TorchThreads(cfg.trainer.threads))
    sae = initial_sae(cfg.sae, datamodule.init_sample())
    module = SAETrainingModule(sae, cfg.sae, cfg.trainer.log_every_n_steps, cfg.trainer.float32_matmul_precision)
    if writer:
        require_free_space(run_dir, checkpoint_bytes(sae), "the checkpoints and the trained SAE", "hydra.run.dir")

    # W&B and CSV on rank 0 only: the other ranks log nothing and keep no run of their own.
    logger = build_logger(cfg.logger, run_dir, cfg.run_name, resolved) if writer else False
    trainer = L.Trainer(
        plugins=cluster_plugins(processes),
        accelerator=cfg.trainer.accelerator,
        devices=gpus or cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy(processes),
        use_distributed_sampler=False,  # the batches shard themselves (sae/activations/batches.py)
        max_steps=cfg.sae.total_steps,
        max_epochs=-1,
        precision="bf16-mixed" if cfg.sae.dtype == "bf16" else "32-true",
        gradient_clip_val=cfg.sae.grad_clip,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    if last is not None and writer:
        print(f"resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last is not None else None)
    leave_process_group()
    if not trainer.is_global_zero:
        return None  # rank 0 writes the run's files
    if not module.trained_this_fit:  # resumed at the final step: Lightning skips the loop and its on_train_end
        for callback in callbacks:
            if hasattr(callback, "summary"):
                callback.on_train_end(trainer, module)

    save_sae(module.sae, run_dir / "sae", provenance(cfg, resolved))
    summary = dict(module.last_metrics)
    for callback in callbacks:
        if hasattr(callback, "summary"):
            summary.update(callback.summary())
    summary.update(
        {
            "steps": trainer.global_step,
            "tokens": trainer.global_step * cfg.sae.batch_size,
            "run_name": cfg.run_name,
            "run_dir": str(run_dir),
        }
    )
    write_summary(run_dir, summary)
    for lg in trainer.loggers:
        finish(lg, summary)
    return summary


def run_locks(run_dirs: list[Path], devices_per_node: int):
    """One job per run directory: its lock, held until the job ends (by global rank 0 of a multi-process job)."""
    return exclusive_dirs(run_dirs, "this run") if is_global_zero(devices_per_node) else nullcontext()


def train_group(group_dir: Path, gpus: list[int] | None = None) -> list[dict]:
    """The runs of one group of a grouped sweep (sae/sweeps/grouping.py), side by side on shared batches."""
    runs = []
    for cfg, run_dir in load_members(group_dir):
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        objects = to_objects(cfg, TrainConfig)
        require(
            objects.trainer.processes == 1,
            f"sweep.grouped=true trains a group's SAEs side by side in one process, on one device "
            f"(trainer.devices={objects.trainer.devices}, trainer.num_nodes={objects.trainer.num_nodes}): "
            "use trainer.devices=1; the launcher spreads the groups over the devices.",
        )
        objects.trainer.progress_bar = False  # one bar per run would interleave
        runs.append((objects, run_dir, OmegaConf.to_container(cfg, resolve=True)))
    with run_locks([r[1] for r in runs], 1):
        for objects, run_dir, resolved in runs:  # every run's config problem before any training
            start_up_checks(objects, run_dir, resolved)
        print(f"grouped sweep: {len(runs)} runs on one activation stream: " + ", ".join(r[1].name for r in runs))
        bridge = lazy_bridge(runs[0][0].model)
        work = lambda i, batches: train(*runs[i], bridge=bridge, lockstep=batches, gpus=gpus)  # noqa: E731
        try:
            summaries, made = run_in_lockstep(len(runs), work)
        except MembersFailed as failed:
            for _, exc in failed.failures:
                if not isinstance(exc, ConfigError):  # a defect: its traceback, then the one-line summary below
                    traceback.print_exception(exc)
            for i, exc in failed.failures:
                print(f"grouped sweep: run {runs[i][1]} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(2 if all(isinstance(exc, ConfigError) for _, exc in failed.failures) else 1)
    print(f"grouped sweep: {made} batches made for {len(runs)} runs")
    return summaries


def check_launcher(objects: TrainConfig) -> None:
    """Several processes per run in a --multirun need a launcher that starts each job's processes itself."""
    hydra_cfg = HydraConfig.get()
    if objects.trainer.processes == 1 or hydra_cfg.mode != RunMode.MULTIRUN:
        return
    require(
        not str(hydra_cfg.launcher.get("_target_", "")).endswith("BasicLauncher"),
        f"trainer.devices={objects.trainer.devices} in a --multirun needs hydra/launcher=local or hydra/launcher=slurm "
        "(they start one process per device for each job); Hydra's default launcher would re-run the whole sweep "
        "in every DDP process.",
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | list[dict] | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        rank = global_rank(int(cfg.trainer.devices))
        # Under hydra/launcher=local: this job's own devices, held while it trains (sae/sweeps/grouping.py).
        with job_placement(cfg, Path(hydra_cfg.sweep.dir), hydra_cfg.job.get("num", 0), rank, run_dir) as placement:
            gpus = list(placement.gpus) if placement and placement.gpus else None
            if OmegaConf.select(cfg, "sweep.group"):
                return train_group(run_dir, gpus)
            objects = to_objects(cfg, TrainConfig)
            check_launcher(objects)
            with run_locks([run_dir], objects.trainer.devices):
                return train(objects, run_dir, OmegaConf.to_container(cfg, resolve=True), gpus=gpus)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dirs = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent / "conf" / "train.yaml").hydra, resolve=False)
    problem = output_dir_problem(sys.argv[1:], {"hydra.run.dir": dirs["run"]["dir"], "hydra.sweep.dir": dirs["sweep"]["dir"]})
    if problem:
        print(f"config error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
