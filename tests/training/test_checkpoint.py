"""The run's checkpoint: written every N steps and every M minutes of training, renamed into place whole."""

import time

import lightning as L
import torch

from callbacks.checkpoint import RunCheckpoint
from sae.architectures import ReLUSAE
from sae.training.config import SAEConfig
from sae.training.module import SAETrainingModule


class _Recording(RunCheckpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved: list[int] = []
        self.times: list[float] = []

    def save(self, trainer) -> None:
        self.times.append(time.monotonic())
        super().save(trainer)
        assert self.path.exists() and not self.path.with_name(self.path.name + ".partial").exists()
        self.saved.append(torch.load(self.path, map_location="cpu", weights_only=False)["global_step"])


class _SlowSteps(L.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


class _Batches:
    """An iterable of batches, as the datamodule's (a plain list would be taken for several dataloaders)."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _fit(tmp_path, steps: int, checkpoint: RunCheckpoint, step_seconds: float = 0.0) -> None:
    torch.manual_seed(0)
    cfg = SAEConfig(expansion=2, batch_size=32, tokens=32 * steps, l1_coefficient=1e-3, lr=1e-3)
    module = SAETrainingModule(ReLUSAE(8, 16), cfg, log_every_n_steps=5)
    batches = _Batches([torch.randn(32, 8) for _ in range(steps)])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint, _SlowSteps(step_seconds)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=batches)


def test_a_checkpoint_is_written_every_few_minutes_between_the_step_checkpoints(tmp_path):
    # 30 steps of >= 0.1 s and a 0.5 s interval: a checkpoint every 0.5 s or so, none of them on the step schedule.
    checkpoint = _Recording(tmp_path / "checkpoints" / "last.ckpt", every_n_steps=1000, every_minutes=0.5 / 60)
    _fit(tmp_path, 30, checkpoint, step_seconds=0.1)
    assert len(checkpoint.saved) >= 3, checkpoint.saved
    assert checkpoint.saved == sorted(set(checkpoint.saved)) and checkpoint.saved[-1] <= 30
    gaps = [b - a for a, b in zip(checkpoint.times, checkpoint.times[1:], strict=False)]
    assert min(gaps) >= 0.5, gaps  # never before the interval has passed
    assert torch.load(checkpoint.path, map_location="cpu", weights_only=False)["global_step"] == checkpoint.saved[-1]
    assert sorted(p.name for p in checkpoint.path.parent.iterdir()) == ["last.ckpt"]


def test_without_minutes_it_checkpoints_on_the_step_schedule_only(tmp_path):
    checkpoint = _Recording(tmp_path / "checkpoints" / "last.ckpt", every_n_steps=10, every_minutes=0)
    _fit(tmp_path, 30, checkpoint, step_seconds=0.01)
    assert checkpoint.saved == [10, 20, 30]
