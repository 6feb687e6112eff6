"""LightningModule: one optimizer step of SAE training and the recipe's schedules.

`training_step` returns how often each feature fired in the batch; the density and resampling
callbacks keep their own counts from it (and checkpoint them themselves). Under DDP each rank trains on
its rows of the batch and the counts are summed over the ranks once, here, so every rank (and every
callback) sees the whole batch's counts and keeps the same statistics.
"""

from __future__ import annotations

import lightning as L
import torch

from sae.architectures import SparseAutoencoder
from sae.evaluation.measures import explained_variance
from sae.training.config import SAEConfig
from sae.training.ranks import all_reduce_sum_, check_in_sync


def l1_warmup_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    warmup = int(warmup_fraction * total_steps)
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def lr_decay_factor(step: int, total_steps: int, decay_fraction: float) -> float:
    """1 until the last `decay_fraction` of steps, then linearly down to 0."""
    decay_start = int((1 - decay_fraction) * total_steps)
    if decay_fraction <= 0 or step < decay_start:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))


class SAETrainingModule(L.LightningModule):
    def __init__(
        self, sae: SparseAutoencoder, cfg: SAEConfig, log_every_n_steps: int = 50, float32_matmul_precision: str = "highest"
    ):
        super().__init__()
        self.sae = sae
        self.cfg = cfg
        self.log_every_n_steps = log_every_n_steps
        # trainer.float32_matmul_precision, set for the fit only ("high": TF32 products on a GPU)
        self.float32_matmul_precision = float32_matmul_precision
        self._precision_before = torch.get_float32_matmul_precision()
        self.last_metrics: dict[str, float] = {}
        # False when Lightning skipped the loop: a run resumed at its final step (see train.py).
        self.trained_this_fit = False
        sae.sparse_kernel = cfg.sparse_kernel
        self.sparse_path_steps = [0, 0]  # (steps on the sparse kernel, steps) since the last log line

    @property
    def total_steps(self) -> int:
        return self.cfg.total_steps

    def l1_coefficient(self) -> float:
        return self.cfg.l1_coefficient * l1_warmup_factor(self.global_step, self.total_steps, self.cfg.l1_warmup_fraction)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        terms = self.sae.loss(batch, self.l1_coefficient())
        self.sparse_path_steps = [self.sparse_path_steps[0] + terms.sparse_path, self.sparse_path_steps[1] + 1]
        # The sparse products count them for free; a full pass over f otherwise. Then summed over the ranks.
        fire_counts = all_reduce_sum_(terms.counted_fires())
        self.sae.observe_firing(fire_counts, batch.shape[0] * self.trainer.world_size)
        if self.global_step % self.log_every_n_steps == 0:
            self._log_step(batch, terms, fire_counts)
        return {"loss": terms.total, "fire_counts": fire_counts}

    @torch.no_grad()
    def _log_step(self, batch, terms, fire_counts) -> None:
        """Written straight to the loggers every N steps: cheap, and no stale values repeated in between."""
        l0 = fire_counts.sum() / (batch.shape[0] * self.trainer.world_size)  # the whole batch's, as the counts
        metrics = {
            "train/loss": terms.total,
            "train/reconstruction_loss": terms.reconstruction,
            "train/sparsity_loss": terms.sparsity,
            "train/aux_loss": terms.auxiliary,
            "train/l0": l0,
            "train/sparse_path": self.sparse_path_steps[0] / max(1, self.sparse_path_steps[1]),
            "train/explained_variance": explained_variance(batch.float(), terms.x_hat.float()),
            "train/l1_coefficient": self.l1_coefficient(),
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        self.last_metrics = {k: float(v) for k, v in metrics.items()}
        self.sparse_path_steps = [0, 0]
        for logger in self.loggers:
            logger.log_metrics(self.last_metrics, step=self.global_step)
        self.log_dict({"loss": terms.total, "l0": l0}, prog_bar=True, on_step=True, logger=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["last_metrics"] = self.last_metrics  # a run resumed at its final step still has a summary
        checkpoint["sparse_path_steps"] = list(self.sparse_path_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.last_metrics = checkpoint.get("last_metrics", {})
        self.sparse_path_steps = list(checkpoint.get("sparse_path_steps", [0, 0]))

    def on_fit_start(self) -> None:
        self._precision_before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        # BatchTopK's selection spans the batch the ranks share (sae/architectures/batchtopk.py).
        if hasattr(self.sae, "across_ranks"):
            self.sae.across_ranks = self.trainer.world_size > 1

    def on_train_start(self) -> None:
        self.trained_this_fit = True

    def on_fit_end(self) -> None:
        torch.set_float32_matmul_precision(self._precision_before)

    def on_train_end(self) -> None:
        check_in_sync(self.sae, "training")  # DDP never re-syncs the weights: any drift between ranks is a bug

    def on_before_optimizer_step(self, optimizer) -> None:
        self.sae.before_optimizer_step_()

    def optimizer_step(self, *args, **kwargs) -> None:
        # The architecture's post-update step (e.g. decoder renormalisation) runs right after the update,
        # before any callback (resampling, checkpointing) sees the weights.
        super().optimizer_step(*args, **kwargs)
        self.sae.after_optimizer_step_()

    def configure_optimizers(self):
        # The fused kernel updates all parameters in one pass: on a CPU, once the products are sparse, Adam's
        # passes over the weights are most of a training step (bench/sparse_step.py measures both).
        fused = all(p.device.type in ("cpu", "cuda") for p in self.sae.parameters())
        optimizer = torch.optim.Adam(self.sae.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas), fused=fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_decay_factor(step, self.total_steps, self.cfg.lr_decay_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
