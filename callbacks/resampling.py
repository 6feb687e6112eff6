"""Dead-neuron resampling during training, on the recipe's schedule (METHOD §2; math in sae/resampling.py)."""

from __future__ import annotations

from typing import Callable, Iterable

import lightning as L
import torch

from sae.config import ResampleConfig
from sae.resampling import dead_features, resample_features_, resample_schedule, sample_by_loss_squared


class NeuronResamplingCallback(L.Callback):
    """At each scheduled step, resample the features that did not fire within the dead window.

    `input_batches(seed)` yields batches of training activations (e.g. from the activation cache);
    the first `n_inputs` of them are scored.
    """

    def __init__(self, cfg: ResampleConfig, total_steps: int, input_batches: Callable[[int], Iterable[torch.Tensor]], seed: int = 0):
        self.cfg = cfg
        self.schedule = resample_schedule(cfg, total_steps)
        self.input_batches = input_batches
        self.seed = seed
        self.history: list[dict[str, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken so far
        if step in self.schedule.steps:
            self.resample(trainer, pl_module, step)

    def resample(self, trainer, pl_module, step: int) -> int:
        dead = dead_features(pl_module.steps_since_fired, self.schedule.dead_window)
        if len(dead):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            inputs = sample_by_loss_squared(
                pl_module.sae, self.input_batches(self.seed + step), len(dead), self.schedule.n_inputs,
                pl_module.l1_coefficient(), generator,
            )
            resample_features_(pl_module.sae, trainer.optimizers[0], dead, inputs, self.cfg.encoder_scale)
            pl_module.steps_since_fired[dead] = 0  # give them a full window before they can be called dead again
        n = len(dead)
        self.history.append({"step": step, "resampled": n})
        metrics = {"resample/n_resampled": n, "resample/fraction_resampled": n / pl_module.sae.n_features}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        print(f"step {step}: resampled {n} dead features (no fire in {self.schedule.dead_window} steps)")
        return n

    def summary(self) -> dict[str, int]:
        return {"resample/total_resampled": sum(h["resampled"] for h in self.history),
                "resample/events": len(self.history)}
