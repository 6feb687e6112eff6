"""ReLU SAE with an L1 penalty: Bricken et al. 2023 ("Towards Monosemanticity") and Conerly et al. 2024 (April update).

    f = ReLU(x̄ W_enc + b_enc)
    2023: loss = mean_d (x − x̂)² + λ Σ_i |f_i|,            decoder rows kept at unit norm, resampling
    2024: loss = Σ_d (x − x̂)² + λ Σ_i f_i ‖W_dec,i‖,       free decoder norms, W_enc = W_decᵀ at norm 0.1

Both are configurations of this one architecture (conf/sae/anthropic_2023.yaml, anthropic_2024.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sae.architectures.base import LossTerms, SparseAutoencoder
from sae.architectures.sparse import encode_decode
from sae.core.errors import ConfigError


@dataclass
class ReLUSettings:
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm (project the parallel gradient out, renormalise after each step): 2023."""
    l1_weighted_by_decoder_norm: bool = False
    """Penalise f_i‖W_dec,i‖ instead of |f_i|, so the decoder norm cannot buy sparsity: 2024."""
    sum_squared_error: bool = False
    """Reconstruction error summed over dimensions (2024) instead of averaged (2023)."""
    init_decoder_norm: Optional[float] = 1.0
    """Norm of each initial decoder row (2023: 1, 2024: 0.1); null keeps kaiming-uniform norms."""
    tied_init: bool = False
    """Start with W_enc = W_decᵀ (2024) instead of an independent kaiming-uniform encoder (2023)."""

    def __post_init__(self) -> None:
        if self.init_decoder_norm is not None and not self.init_decoder_norm > 0:
            raise ConfigError(f"sae.settings.init_decoder_norm={self.init_decoder_norm} must be > 0 (or null).")


class ReLUSAE(SparseAutoencoder):
    name = "relu"
    Settings = ReLUSettings
    sparsity_knob = "l1_coefficient"
    supports_resampling = True
    dead_latent_remedy = "dead-neuron resampling (sae.resample)"
    saelens_architecture = "standard"

    @classmethod
    def sparsify_k(cls, cfg: dict) -> int:
        return int(cfg["n_features"])  # TopK over all latents: ReLU, then keep all

    @torch.no_grad()
    def reset_parameters(self) -> None:
        s = self.settings
        bound = 1.0 / self.d_in**0.5  # kaiming-uniform (a=√5) of W_dec [n, d]: fan-in d_in
        self.W_dec.uniform_(-bound, bound)
        if s.init_decoder_norm is not None:
            self.W_dec.mul_(s.init_decoder_norm / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if s.tied_init:
            self.W_enc.copy_(self.W_dec.T)
        else:  # kaiming-uniform (a=√5) with the encoder's true fan-in, d_in (each feature reads d_in inputs)
            self.W_enc.uniform_(-bound, bound)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))

    def per_input_loss(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, L1) per input: the batch loss is their mean; resampling weights inputs by it."""
        err = self.squared_error(x, x_hat)
        reconstruction = err.sum(dim=-1) if self.settings.sum_squared_error else err.mean(dim=-1)
        if self.settings.l1_weighted_by_decoder_norm:
            l1 = (f.float() * self.W_dec.norm(dim=1).float()).sum(dim=-1)
        else:
            l1 = f.float().abs().sum(dim=-1)
        return reconstruction, l1

    def loss(self, x: torch.Tensor, sparsity_coefficient: float) -> LossTerms:
        step = encode_decode(self, x, torch.relu, self.sparse_kernel)
        reconstruction, l1 = self.per_input_loss(x, step.x_hat, step.features)
        return LossTerms.from_step(step, reconstruction.mean(), l1.mean(), sparsity_coefficient)
