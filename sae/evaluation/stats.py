"""Activation statistics of an SAE over a stream of inputs, in bounded memory; decoder-direction similarity.

Over a token stream: L0, MSE, L1, explained variance (about the mean), cosine(x, x̂), ‖x̂‖/‖x‖, and
per-feature firing counts for the density metrics. "Rare features are more similar": mean pairwise
cosine of decoder rows inside a group.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from sae.architectures import SparseAutoencoder

# Bytes one chunk's feature activations may take (float32), with room for the encoder's temporaries.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


def rows_per_chunk(n_features: int, budget_bytes: int = DEFAULT_MEMORY_BUDGET, element_bytes: int = 4) -> int:
    """Rows whose [rows, n_features] activations fit the budget; encoding holds ~3 such tensors at once
    (pre-activation, bias added, ReLU), so a quarter of the budget goes to each with room to spare."""
    return max(1, budget_bytes // (4 * n_features * element_bytes))


class ActivationStats:
    """Streaming reconstruction and sparsity statistics.

    Only the accumulators are float64 (so long streams stay exact); the [rows, n_features] feature
    activations stay in the SAE's dtype and are never copied, and `activation_stats` feeds them in
    chunks of rows bounded by a memory budget: a 256x SAE of a 768-wide model needs ~0.8 MB per row.
    """

    def __init__(self, n_features: int, device: torch.device | str = "cpu"):
        self.fire_counts = torch.zeros(n_features, dtype=torch.long, device=device)
        self.tokens = 0
        self._sums = torch.zeros(6, dtype=torch.float64, device=device)  # l0, l1, sq_err, sq_norm, cosine, norm_ratio
        self._sum_x: torch.Tensor | None = None
        self._d = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        fired = f > 0
        per_feature = fired.sum(dim=0)
        self.fire_counts += per_feature.to(self.fire_counts.device)
        self.tokens += len(x)
        self._d = x.shape[1]
        x, x_hat = x.double(), x_hat.double()  # [rows, d_in]: small
        l1 = torch.linalg.vector_norm(f, ord=1, dim=1).double().sum()  # a reduction: no copy of f
        x_norm, x_hat_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        chunk = torch.stack(
            [
                per_feature.sum().double(),
                l1,
                (x - x_hat).pow(2).sum(),
                x.pow(2).sum(),
                F.cosine_similarity(x, x_hat, dim=-1).sum(),
                (x_hat_norm / x_norm.clamp_min(1e-12)).sum(),
            ]
        )
        self._sums += chunk.to(self._sums.device)
        sum_x = x.sum(dim=0).to(self._sums.device)
        self._sum_x = sum_x if self._sum_x is None else self._sum_x + sum_x

    def result(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        l0, l1, sq_err, sq_norm, cosine, norm_ratio = self._sums.tolist()
        # Σ‖x − mean‖² = Σ‖x‖² − n‖mean‖²
        variance_sum = sq_norm - (self._sum_x.pow(2).sum().item() / n if self._sum_x is not None else 0.0)
        return {
            "l0": l0 / n,
            "l1": l1 / n,
            "mse": sq_err / (n * max(self._d, 1)),
            "explained_variance": 1 - sq_err / max(variance_sum, 1e-12),
            "cosine_similarity": cosine / n,
            "norm_ratio": norm_ratio / n,
            "tokens": self.tokens,
        }

    def counts(self) -> torch.Tensor:
        """Per-feature firing counts, on the CPU."""
        return self.fire_counts.cpu()


@torch.no_grad()
def activation_stats(
    sae: SparseAutoencoder, batches: Iterable[torch.Tensor], max_tokens: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> ActivationStats:
    """Statistics over up to `max_tokens` rows of `batches`, on the SAE's device, in budget-sized chunks."""
    p = sae.W_dec
    stats = ActivationStats(sae.n_features, p.device)
    step = rows_per_chunk(sae.n_features, memory_budget, p.element_size())
    for batch in batches:
        batch = batch[: max_tokens - stats.tokens]
        for start in range(0, len(batch), step):
            x = batch[start : start + step].to(p.device, p.dtype)
            x_hat, f = sae(x)
            stats.update(x, x_hat, f)
            del x_hat, f
        if stats.tokens >= max_tokens:
            break
    return stats


def mean_pairwise_cosine(directions: torch.Tensor) -> float:
    """Mean cosine over distinct pairs, O(n·d): for unit vectors Σ_{i≠j} uᵢ·uⱼ = ‖Σuᵢ‖² − n."""
    n = len(directions)
    if n < 2:
        return float("nan")
    u = F.normalize(directions.double(), dim=1)
    return ((u.sum(dim=0).pow(2).sum() - n) / (n * (n - 1))).item()


def pairwise_cosines(directions: torch.Tensor, max_vectors: int = 2000, seed: int = 0) -> torch.Tensor:
    """Cosines of all distinct pairs among (at most `max_vectors` random) rows, for histograms."""
    if len(directions) > max_vectors:
        directions = directions[torch.randperm(len(directions), generator=torch.Generator().manual_seed(seed))[:max_vectors]]
    u = F.normalize(directions.float(), dim=1)
    sims = u @ u.T
    return sims[torch.triu_indices(len(u), len(u), offset=1).unbind()]
