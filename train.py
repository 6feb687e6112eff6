"""Train a sparse autoencoder on one hook of a language model.

    python train.py                                  # embedded default: SmolLM2-135M + Wikipedia, offline
    python train.py model=distilgpt2 data=pile       # the reference set-up (needs the internet)
    python train.py --multirun +sweep=smoke          # a sweep (see sweeps/)

Running the same command again resumes an interrupted run from its last.ckpt, and skips a
finished one. The run directory gets `sae/` (sae.safetensors + cfg.json), `checkpoints/`,
`plots/`, `summary.json` and the W&B run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from callbacks.density import FeatureDensityCallback
from callbacks.progress import StepProgressBar
from callbacks.reconstruction import ReconstructionScoreCallback
from callbacks.resampling import NeuronResamplingCallback
from sae.architectures import SparseAutoencoder, get_architecture
from sae.config import ConfigError, TrainConfig, register_configs, to_objects
from sae.datamodule import ActivationDataModule
from sae.files import atomic_write_json
from sae.io import WEIGHTS, save_sae
from sae.lm import check_context_length, lazy_bridge
from sae.lockstep import MemberBatches, run_in_lockstep
from sae.module import SAETrainingModule
from sae.resampling import resample_schedule
from sae.run_identity import check_checkpoint, claim_run_dir, training_identity
from sae.run_logger import build_logger
from sae.sweep_groups import load_members

register_configs()


def build_sae(cfg: TrainConfig, sample: torch.Tensor) -> SparseAutoencoder:
    """The configured architecture, initialised as it defines, then input scale and b_dec from the data sample."""
    s = cfg.sae
    d_in = sample.shape[1]
    architecture = get_architecture(s.architecture)
    settings = s.architecture_settings()
    if getattr(settings, "k", None) is not None and settings.k > d_in * s.expansion:
        raise ConfigError(
            f"sae.k={settings.k} exceeds the SAE's {d_in * s.expansion} features (d_in {d_in} x sae.expansion={s.expansion})."
        )
    sae = architecture(d_in, d_in * s.expansion, settings)
    sae.initialise_from_data_(sample, s.scale_inputs, s.b_dec_init)
    return sae


def start_up_checks(cfg: TrainConfig, run_dir: Path, resolved: dict) -> Path | None:
    """Before any work: this directory is this config's, the context fits the model, and the
    checkpoint to resume from (returned, None to start fresh) is readable."""
    last = run_dir / "checkpoints" / "last.ckpt"
    finished = (run_dir / "sae" / WEIGHTS).exists() and (run_dir / "summary.json").exists()
    claim_run_dir(run_dir, training_identity(resolved), has_progress=finished or last.exists())
    check_context_length(cfg.model, cfg.data.context_length)
    if not last.exists() or finished:
        return None
    if not cfg.trainer.resume:
        kept = last.with_name(last.name + ".old")
        last.replace(kept)  # kept, not deleted; and Lightning would otherwise write last-v1.ckpt beside it
        print(f"trainer.resume=false: starting over; the previous checkpoint is now {kept}")
        return None
    check_checkpoint(last)
    return last


def build_callbacks(
    cfg: TrainConfig, run_dir: Path, bridge, datamodule: ActivationDataModule, lockstep: MemberBatches | None = None
) -> list[L.Callback]:
    """Callbacks with a `summary()` method also contribute to the run's summary.json."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    density = FeatureDensityCallback(cfg.trainer.density_window_steps, run_dir / "plots")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=cfg.trainer.checkpoint_every_n_steps
    )
    callbacks: list[L.Callback] = [density, checkpoint]
    if cfg.sae.resample.enabled:
        schedule = resample_schedule(cfg.sae.resample, cfg.sae.total_steps, cfg.sae.batch_size)
        if schedule.note:
            print(schedule.note)
        callbacks.append(
            NeuronResamplingCallback(schedule, datamodule.resampling_inputs, cfg.sae.resample.encoder_scale, cfg.sae.seed)
        )
    if cfg.trainer.eval_tokens > 0:
        callbacks.append(
            ReconstructionScoreCallback(
                bridge,
                cfg.model,
                cfg.data,
                cfg.trainer.eval_tokens,
                cfg.trainer.eval_every_n_steps,
                cfg.trainer.heldout_tokens,
                cfg.activations.harvest_batch_size,
                shared=lockstep.shared if lockstep else None,
            )
        )
    if cfg.trainer.progress_bar:
        callbacks.append(StepProgressBar())
    return callbacks


def train(cfg: TrainConfig, run_dir: Path, resolved: dict, bridge=None, lockstep: MemberBatches | None = None) -> dict:
    """One run. In a grouped sweep the group's runs share `bridge` (the model) and `lockstep` (the batches)."""
    summary_path = run_dir / "summary.json"
    last = start_up_checks(cfg, run_dir, resolved)
    if (run_dir / "sae" / WEIGHTS).exists() and summary_path.exists():
        print(f"{run_dir} already holds a finished SAE; skipping (delete the directory to train again).")
        return json.loads(summary_path.read_text())
    L.seed_everything(cfg.sae.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)

    bridge = bridge or lazy_bridge(cfg.model)
    datamodule = ActivationDataModule(cfg, bridge, lockstep)
    callbacks = build_callbacks(cfg, run_dir, bridge, datamodule, lockstep)
    sae = build_sae(cfg, datamodule.init_sample())
    module = SAETrainingModule(sae, cfg.sae, cfg.trainer.log_every_n_steps)

    logger = build_logger(cfg.logger, run_dir, cfg.run_name, resolved)
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    # Under Slurm, requeueing is submitit's job (hydra/launcher=slurm); Lightning's own would be a second one.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    trainer = L.Trainer(
        plugins=plugins,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
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
    if last is not None:
        print(f"resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last is not None else None)
    if not module.trained_this_fit:  # resumed at the final step: Lightning skips the loop and its on_train_end
        for callback in callbacks:
            if hasattr(callback, "summary"):
                callback.on_train_end(trainer, module)

    provenance = {
        "model": cfg.model.name,
        "layer": cfg.model.layer,
        "hook": cfg.model.hook,
        "hook_name": f"blocks.{cfg.model.layer}.{cfg.model.hook}",
        "train_config": resolved,
    }
    save_sae(module.sae, run_dir / "sae", provenance)
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
    atomic_write_json(summary_path, summary)
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            lg.experiment.finish()  # the next job of a sequential sweep (same process) starts a run of its own
    return summary


def train_group(group_dir: Path) -> list[dict]:
    """The runs of one group of a grouped sweep (sae/sweep_groups.py), side by side on shared batches."""
    runs = []
    for cfg, run_dir in load_members(group_dir):
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        objects = to_objects(cfg, TrainConfig)
        objects.trainer.progress_bar = False  # one bar per run would interleave
        runs.append((objects, run_dir, OmegaConf.to_container(cfg, resolve=True)))
    for objects, run_dir, resolved in runs:  # every run's config problem before any training
        start_up_checks(objects, run_dir, resolved)
    print(f"grouped sweep: {len(runs)} runs on one activation stream: " + ", ".join(r[1].name for r in runs))
    bridge = lazy_bridge(runs[0][0].model)
    summaries, made = run_in_lockstep(len(runs), lambda i, batches: train(*runs[i], bridge=bridge, lockstep=batches))
    print(f"grouped sweep: {made} batches made for {len(runs)} runs")
    return summaries


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | list[dict] | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if OmegaConf.select(cfg, "sweep.group"):
            return train_group(run_dir)
        objects = to_objects(cfg, TrainConfig)
        return train(objects, run_dir, OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
