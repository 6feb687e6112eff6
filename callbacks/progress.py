"""Progress over optimizer steps: a bar with the time left, and one line with the measured estimate.

The activation stream has no length; the step budget does. The bar redraws a few times a second rather
than every step: a redraw reads the logged metrics back from the device, which on a GPU is a wait for the
step in flight.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

from sae.training.plan import WarmupClock


class StepProgressBar(TQDMProgressBar):
    """tqdm's bar over `max_steps`: steps done, elapsed and remaining time, steps per second, loss and L0."""

    def __init__(self, redraw_seconds: float = 0.5):
        super().__init__()
        self.redraw_seconds = redraw_seconds
        self._drawn = 0.0

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.set_description("train SAE")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._drawn >= self.redraw_seconds or trainer.global_step >= trainer.max_steps:
            self._drawn = now
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self.train_progress_bar.refresh()


class TimeEstimate(L.Callback):
    """Prints, after a short measured warm-up, the run's speed and the time it needs to finish (sae/training/plan.py)."""

    def __init__(self, batch_size: int, **clock):
        self.batch_size = batch_size
        self.clock_settings = clock
        self.clock: WarmupClock | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock = WarmupClock(trainer.max_steps, self.batch_size, **self.clock_settings)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.clock.done:
            return
        line = self.clock.step(trainer.global_step, time.monotonic())
        if line and trainer.is_global_zero:  # one line per run, not one per DDP rank
            tqdm.write(line)  # above the progress bar, not through it
