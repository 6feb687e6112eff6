"""The run's checkpoint, `checkpoints/last.ckpt`: every N optimizer steps and every M minutes of training.

Steps alone bound the work a failure loses on a slow machine; on a GPU a few thousand steps take a minute,
and a billion-token run should lose no more than the last few minutes to a node failure whatever its speed.
The file is written beside its final name and renamed into place, so a crash mid-write leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Checkpoint


class RunCheckpoint(Checkpoint):
    """A `Checkpoint`, so Lightning runs it after the other callbacks (whose state it saves) and adds no default one."""

    # On several processes the clock is read only every this many steps: rank 0's decision is broadcast, a collective.
    DISTRIBUTED_CLOCK_STEPS = 10

    def __init__(self, path: str | Path, every_n_steps: int, every_minutes: float = 0.0):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_seconds = every_minutes * 60
        self._last_step: int | None = None
        self._last_time = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_time = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        if step % self.every_n_steps == 0 or self._time_is_up(trainer, step):
            self.save(trainer)

    def _time_is_up(self, trainer, step: int) -> bool:
        if not self.every_seconds:
            return False
        if trainer.world_size > 1:
            if step % self.DISTRIBUTED_CLOCK_STEPS:
                return False
            return bool(trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.every_seconds))
        return time.monotonic() - self._last_time >= self.every_seconds

    def save(self, trainer) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)  # every process takes part; the strategy writes on rank 0
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier("RunCheckpoint.save")
        self._last_step, self._last_time = trainer.global_step, time.monotonic()
