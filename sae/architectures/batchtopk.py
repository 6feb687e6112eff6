"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the k·B largest activations over the whole batch of B inputs (so k on average per
input, more for hard inputs, fewer for easy ones), with TopK's AuxK loss and decoder handling.
At inference a latent fires when its pre-activation exceeds one threshold θ, estimated during
training as a running mean of the smallest activation the batch selection kept. θ is a buffer:
saved with the SAE and checkpointed. Before any training step θ is unknown and encode falls
back to per-input TopK.

When DDP ranks share a batch (`across_ranks`), each holds B/N of its rows: every rank sends its own
k·B largest pre-activations to all (all_gather), and all take the k·B-th largest of the union as the
batch's cut. Each keeps its entries at or above the cut: the one-process selection, up to entries
exactly equal to the cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def keep_top_k_of_distributed_batch(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the selection over the batch the ranks share (each holding [B/N, n] of it), and the
    k·B largest values of the whole batch (what the threshold estimate reads)."""
    ranks = dist.get_world_size()
    kept = k * pre.shape[0] * ranks
    flat = pre.reshape(-1)
    mine = flat.detach().topk(min(kept, flat.numel())).values
    if len(mine) < kept:  # equal sizes for all_gather; -inf never reaches the cut
        mine = torch.cat([mine, mine.new_full((kept - len(mine),), float("-inf"))])
    gathered = [torch.empty_like(mine) for _ in range(ranks)]
    dist.all_gather(gathered, mine)
    top = torch.cat(gathered).topk(kept).values
    f = torch.where(pre >= top[-1], torch.relu(pre), torch.zeros_like(pre))
    return f, top


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
        # True while DDP ranks train on one batch: the trainer sets it (sae/training/module.py).
        self.across_ranks = False

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activation(x)
        if self.threshold < 0:
            return keep_top_k(pre, self.settings.k)
        return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))

    def select(self, pre: torch.Tensor) -> torch.Tensor:
        rows = pre.reshape(-1, self.n_features)
        if self.across_ranks and dist.is_initialized() and dist.get_world_size() > 1:
            f, top = keep_top_k_of_distributed_batch(rows, self.settings.k)
            self._update_threshold(torch.relu(top))
            return f.reshape(pre.shape)
        f = keep_top_k_of_batch(rows, self.settings.k).reshape(pre.shape)
        self._update_threshold(f)
        return f

    @torch.no_grad()
    def _update_threshold(self, f: torch.Tensor) -> None:
        """From the smallest activation the selection kept (`f`: the kept activations, zeros elsewhere)."""
        kept = f[f > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            m = self.settings.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest)
