"""Lightning callbacks of a training run: feature density, dead-neuron resampling, held-out evaluation, the
checkpoint, progress and the time estimate.

`build_callbacks` assembles them from the run's settings; those with a `summary()` also contribute to the
run's summary.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L

from callbacks.checkpoint import RunCheckpoint
from callbacks.density import FeatureDensityCallback
from callbacks.progress import StepProgressBar, TimeEstimate
from callbacks.reconstruction import ReconstructionScoreCallback
from callbacks.resampling import NeuronResamplingCallback
from sae.activations.datamodule import ActivationDataModule
from sae.training.config import TrainConfig
from sae.training.resampling import resample_schedule
from sae.training.run import last_checkpoint


def build_callbacks(
    cfg: TrainConfig,
    run_dir: Path,
    bridge: Callable[[], object],
    datamodule: ActivationDataModule,
    shared: Callable[[str, Callable[[], object]], object] | None = None,
) -> list[L.Callback]:
    """`shared(name, make)`: objects the runs of a grouped sweep share (the held-out tokens' zero-ablated losses)."""
    density = FeatureDensityCallback(cfg.trainer.density_window_steps, run_dir / "plots")
    checkpoint = RunCheckpoint(
        last_checkpoint(run_dir), cfg.trainer.checkpoint_every_n_steps, cfg.trainer.checkpoint_every_minutes
    )
    callbacks: list[L.Callback] = [density, checkpoint, TimeEstimate(cfg.sae.batch_size)]
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
                shared=shared,
            )
        )
    if cfg.trainer.progress_bar:
        callbacks.append(StepProgressBar())
    return callbacks
