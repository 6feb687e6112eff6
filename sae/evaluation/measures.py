"""Sparsity and reconstruction metrics (L0, explained variance, feature density), plain torch."""

from __future__ import annotations

import math

import torch

ULTRALOW_DENSITY = 1e-6


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²: variance about the mean, not about zero."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum()
    return 1 - residual / total.clamp_min(1e-12)


def l0(features: torch.Tensor) -> torch.Tensor:
    return (features > 0).float().sum(dim=-1).mean()


def log10_density(fire_counts: torch.Tensor, tokens: int) -> torch.Tensor:
    return torch.log10(fire_counts.double() / max(tokens, 1) + 1e-10)


def density_summary(fire_counts: torch.Tensor, tokens: int) -> dict[str, float]:
    """Fractions of features that never fired (dead) or fire below the thresholds, over `tokens` tokens."""
    density = fire_counts.double() / max(tokens, 1)
    return {
        "dead_fraction": (fire_counts == 0).double().mean().item(),
        "ultralow_fraction": (density < ULTRALOW_DENSITY).double().mean().item(),
        "below_1e-5_fraction": (density < 1e-5).double().mean().item(),
        "dense_fraction": (density > 0.01).double().mean().item(),
        "density_tokens": tokens,
    }


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean()


def norm_ratio(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return (x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).mean()


def recovered_fraction(zero: float, patched: float, clean: float) -> float:
    """(zero − patched) / (zero − clean): 1 when patching costs nothing, 0 when it is as bad as ablation."""
    denom = zero - clean
    return (zero - patched) / denom if abs(denom) > 1e-12 else math.nan
