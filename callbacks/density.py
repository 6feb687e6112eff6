"""Feature-density histograms: log10(firing frequency) per feature over a window of training steps.

A healthy run is bimodal (an ultralow cluster near 1e-7..1e-6, a main mode near 1e-5..1e-3).
Logged to W&B as a `wandb.Histogram` and saved as a PNG in the run directory. The window's counts
are this callback's state, checkpointed with it, so a resumed run closes the same windows. Under DDP the
counts it receives are the whole batch's (summed over the ranks by the training module): every rank
keeps the same window, and rank 0 alone plots and logs it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from sae.core.tracking import log_results
from sae.evaluation.measures import density_summary, log10_density
from sae.evaluation.plots import plot_density_histogram


class FeatureDensityCallback(L.Callback):
    def __init__(self, window_steps: int, plot_dir: str | Path):
        self.window_steps = window_steps
        self.plot_dir = Path(plot_dir)
        self.fire_counts: torch.Tensor | None = None  # per feature, over the current window
        self.window_tokens = 0
        self.last_summary: dict[str, float] = {}

    def summary(self) -> dict[str, float]:
        """Dead/ultralow fractions of the last window, for the run's summary.json."""
        return {f"density/{k}": v for k, v in self.last_summary.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counts = outputs["fire_counts"]
        if self.fire_counts is None:
            self.fire_counts = torch.zeros_like(counts)
        self.fire_counts = self.fire_counts.to(counts.device) + counts
        self.window_tokens += len(batch) * trainer.world_size  # the ranks' rows together: the whole batch
        final = trainer.global_step >= trainer.max_steps
        if final or trainer.global_step % self.window_steps == 0:
            self._close_window(trainer, final=final)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.window_tokens > 0:
            self._close_window(trainer, final=True)

    def state_dict(self) -> dict:
        counts = None if self.fire_counts is None else self.fire_counts.cpu()
        return {"fire_counts": counts, "window_tokens": self.window_tokens, "last_summary": dict(self.last_summary)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.fire_counts = state_dict["fire_counts"]
        self.window_tokens = int(state_dict["window_tokens"])
        self.last_summary = dict(state_dict["last_summary"])

    def _close_window(self, trainer, final: bool) -> None:
        counts, tokens = self.fire_counts.cpu(), self.window_tokens
        self.fire_counts, self.window_tokens = None, 0
        log_density = log10_density(counts, tokens)
        summary = density_summary(counts, tokens)
        self.last_summary = summary
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        path = plot_density_histogram(
            log_density.numpy(),
            self.plot_dir / ("density.png" if final else f"density_step{step:07d}.png"),
            title=f"feature density over {tokens:,} tokens (step {step})",
        )
        metrics = {f"density/{k}": v for k, v in summary.items()}
        histogram = {"density/log10_feature_density": log_density.clamp_min(-10).tolist()}
        for logger in trainer.loggers:
            log_results(logger, metrics, step, images={"density/histogram_png": path}, histograms=histogram)
