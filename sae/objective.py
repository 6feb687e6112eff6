"""The training loss: reconstruction error plus an L1 sparsity penalty, in the SAE's scaled input space."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae.model import SparseAutoencoder


@dataclass
class LossTerms:
    total: torch.Tensor
    reconstruction: torch.Tensor
    l1: torch.Tensor
    x_hat: torch.Tensor
    features: torch.Tensor


def sae_loss(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    l1_coefficient: float,
    l1_weighted_by_decoder_norm: bool = False,
    sum_squared_error: bool = False,
) -> LossTerms:
    """2023: mean squared error + λ·Σ|f|.  2024: Σ squared error + λ·Σ f_i‖W_d,i‖ (inputs pre-scaled)."""
    x_hat, f = sae(x)
    reconstruction, l1 = per_input_terms(sae, x, x_hat, f, l1_weighted_by_decoder_norm, sum_squared_error)
    reconstruction, l1 = reconstruction.mean(), l1.mean()
    return LossTerms(reconstruction + l1_coefficient * l1, reconstruction, l1, x_hat, f)


def per_input_terms(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    f: torch.Tensor,
    l1_weighted_by_decoder_norm: bool = False,
    sum_squared_error: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, L1) per input: the batch loss is their mean; resampling weights inputs by it."""
    err = ((x - x_hat) * sae.input_scale).float().pow(2)
    reconstruction = err.sum(dim=-1) if sum_squared_error else err.mean(dim=-1)
    if l1_weighted_by_decoder_norm:
        l1 = (f.float() * sae.W_dec.norm(dim=1).float()).sum(dim=-1)
    else:
        l1 = f.float().abs().sum(dim=-1)
    return reconstruction, l1
