"""Dead-neuron resampling during training, on the recipe's token schedule (math in sae/resampling.py).

The callback keeps its own state (steps since each feature last fired, the history of events) and
checkpoints it, so a resumed run resamples exactly as an uninterrupted one would. Under DDP every rank
sees the whole batch's fire counts, so all find the same dead features; rank 0 draws the new directions
and sends them to the others, and every rank applies the same update (weights and Adam moments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch

from sae.training.ranks import check_in_sync
from sae.training.resampling import ResampleSchedule, dead_features, resample_features_, sample_by_loss_squared


class NeuronResamplingCallback(L.Callback):
    """At each scheduled step, resample the features that did not fire within the dead window.

    `input_batches(step)` yields batches of training activations near the run's current position;
    the first `n_inputs` of them are scored.
    """

    def __init__(
        self,
        schedule: ResampleSchedule,
        input_batches: Callable[[int], Iterable[torch.Tensor]],
        encoder_scale: float = 0.2,
        seed: int = 0,
    ):
        self.schedule = schedule
        self.input_batches = input_batches
        self.encoder_scale = encoder_scale
        self.seed = seed
        self.steps_since_fired: torch.Tensor | None = None
        self.history: list[dict[str, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        fired = outputs["fire_counts"] > 0
        if self.steps_since_fired is None:
            self.steps_since_fired = torch.zeros(fired.shape, dtype=torch.long, device=fired.device)
        self.steps_since_fired = self.steps_since_fired.to(fired.device).add_(1).masked_fill_(fired, 0)
        step = trainer.global_step  # optimizer steps taken so far
        if step in self.schedule.steps:
            self.resample(trainer, pl_module, step)

    def resample(self, trainer, pl_module, step: int) -> int:
        dead = dead_features(self.steps_since_fired, self.schedule.dead_window)
        if len(dead):
            inputs = None
            if trainer.is_global_zero:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
                inputs = sample_by_loss_squared(
                    pl_module.sae,
                    self.input_batches(step),
                    len(dead),
                    self.schedule.n_inputs,
                    pl_module.l1_coefficient(),
                    generator,
                )
            inputs = trainer.strategy.broadcast(inputs, src=0)  # the same directions on every rank
            resample_features_(pl_module.sae, trainer.optimizers[0], dead, inputs, self.encoder_scale)
            self.steps_since_fired[dead] = 0  # give them a full window before they can be called dead again
            check_in_sync(pl_module.sae, f"resampling at step {step}")
        n = len(dead)
        window = self.schedule.window_tokens
        self.history.append({"step": step, "resampled": n, "window_tokens": window})
        metrics = {
            "resample/n_resampled": n,
            "resample/fraction_resampled": n / len(self.steps_since_fired),
            "resample/dead_window_tokens": window,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if trainer.is_global_zero:
            print(f"step {step}: resampled {n} dead features (no fire in the last {window:,} tokens)")
        return n

    def state_dict(self) -> dict:
        since = None if self.steps_since_fired is None else self.steps_since_fired.cpu()
        return {"steps_since_fired": since, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps_since_fired = state_dict["steps_since_fired"]
        self.history = [dict(h) for h in state_dict["history"]]

    def summary(self) -> dict[str, int]:
        return {
            "resample/total_resampled": sum(h["resampled"] for h in self.history),
            "resample/events": len(self.history),
            "resample/dead_window_tokens": self.schedule.window_tokens,
        }
