"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the k·B largest activations over the whole batch of B inputs (so k on average per
input, more for hard inputs, fewer for easy ones), with TopK's AuxK loss and decoder handling.
At inference a latent fires when its pre-activation exceeds one threshold θ, estimated during
training as a running mean of the smallest activation the batch selection kept. θ is a buffer:
saved with the SAE and checkpointed. Before any training step θ is unknown and encode falls
back to per-input TopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae.architectures.topk import TopKSAE, TopKSettings, keep_top_k
from sae.core.errors import ConfigError


@dataclass
class BatchTopKSettings(TopKSettings):
    threshold_momentum: float = 0.99
    """Weight of the old estimate in θ ← m·θ + (1 − m)·(smallest kept activation of the batch). The estimate
    starts at the first batch, when activations are far from their trained scale: at 0.999 a 1,000-step run's θ
    still holds 37% of that first value (held-out L0 9 at k 24 on the embedded default), at 0.99 it is gone in a
    few hundred steps. SAELens averages with the same weight."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ConfigError(f"sae.settings.threshold_momentum={self.threshold_momentum} must be in [0, 1).")


def keep_top_k_of_batch(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k·B largest entries over the whole [B, n] batch, zeros elsewhere."""
    flat = pre.reshape(-1)
    values, indices = flat.topk(min(k * pre.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, indices, torch.relu(values)).reshape(pre.shape)


class BatchTopKSAE(TopKSAE):
    name = "batchtopk"
    Settings = BatchTopKSettings
    # At inference it keeps pre > θ (θ ≥ 0): a JumpReLU with θ for every latent, as SAELens saves its own.
    saelens_architecture = "jumprelu"

    @classmethod
    def saelens_extra(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        theta = float(tensors["threshold"])
        if theta < 0:
            raise ConfigError("this BatchTopK SAE has no inference threshold yet (it never trained a step): train it first.")
        return {}, {"threshold": torch.full((int(cfg["n_features"]),), theta)}

    @classmethod
    def sparsify_k(cls, cfg: dict) -> int | None:
        return None  # a threshold at inference, not k per input

    def add_state(self) -> None:
        super().add_state()
        self.register_buffer("threshold", torch.full((), -1.0))  # < 0: not estimated yet

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activation(x)
        if self.threshold < 0:
            return keep_top_k(pre, self.settings.k)
        return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))

    def select(self, pre: torch.Tensor) -> torch.Tensor:
        f = keep_top_k_of_batch(pre.reshape(-1, self.n_features), self.settings.k).reshape(pre.shape)
        self._update_threshold(f)
        return f

    @torch.no_grad()
    def _update_threshold(self, f: torch.Tensor) -> None:
        kept = f[f > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            m = self.settings.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest)
