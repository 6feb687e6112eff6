"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU SAEs").

    f_i = z_i · H(z_i − θ_i),  z = x̄ W_enc + b_enc,  θ_i = exp(t_i) > 0 learned per latent
    loss = Σ_d (x − x̂)² + λ Σ_i H(z_i − θ_i)        (an L0 penalty; λ is sae.l1_coefficient)

H has no useful gradient, so θ learns through straight-through estimators with a rectangle
kernel K(u) = 1{|u| < ½} of bandwidth ε:
    ∂f_i/∂θ_i := −(θ_i/ε) K((z_i − θ_i)/ε),   ∂H(z_i − θ_i)/∂θ_i := −(1/ε) K((z_i − θ_i)/ε)
while ∂f_i/∂z_i = H(z_i − θ_i) and the L0 term passes no gradient to z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sae.architectures.base import LossTerms, SparseAutoencoder
from sae.core.errors import ConfigError


@dataclass
class JumpReLUSettings:
    initial_threshold: float = 0.001
    """θ of every latent at the start (Rajamanoharan et al.: 0.001 on inputs scaled to E‖x‖ = √d)."""
    bandwidth: float = 0.001
    """Width ε of the rectangle kernel of the threshold's straight-through gradient (Rajamanoharan et al.: 0.001)."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm; the L0 penalty ignores decoder norms, so this only fixes the scale symmetry."""

    def __post_init__(self) -> None:
        for name in ("initial_threshold", "bandwidth"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sae.settings.{name}={getattr(self, name)} must be > 0.")


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """z·H(z − θ), with the straight-through gradient −(θ/ε)K((z − θ)/ε) for θ."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > threshold).to(z.dtype)
        grad_threshold = -(threshold / eps) * _rectangle((z - threshold) / eps) * grad
        return grad_z, grad_threshold.reshape(-1, z.shape[-1]).sum(dim=0), None


class StepFunction(torch.autograd.Function):
    """H(z − θ), with the straight-through gradient −(1/ε)K((z − θ)/ε) for θ and none for z."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((z - threshold) / eps) * grad
        return torch.zeros_like(z), grad_threshold.reshape(-1, z.shape[-1]).sum(dim=0), None


class JumpReLUSAE(SparseAutoencoder):
    name = "jumprelu"
    Settings = JumpReLUSettings
    sparsity_knob = "l1_coefficient"
    supports_resampling = False
    dead_latent_remedy = "none (trained without resampling, as Rajamanoharan et al.)"
    saelens_architecture = "jumprelu"

    @classmethod
    def saelens_extra(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        return {}, {"threshold": tensors["log_threshold"].exp()}  # in pre-activation units, which the fold leaves alone

    def add_state(self) -> None:
        self.log_threshold = nn.Parameter(torch.empty(self.n_features))  # θ = exp(log_threshold) stays > 0

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self._random_unit_decoder_tied_encoder_(1.0)
            self.log_threshold.fill_(math.log(self.settings.initial_threshold))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(self.pre_activation(x), self.threshold, self.settings.bandwidth)

    def loss(self, x: torch.Tensor, sparsity_coefficient: float) -> LossTerms:
        z = self.pre_activation(x)
        threshold = self.threshold
        f = JumpReLUFunction.apply(z, threshold, self.settings.bandwidth)
        x_hat = self.decode(f)
        reconstruction = self.squared_error(x, x_hat).sum(dim=-1).mean()
        l0 = StepFunction.apply(z, threshold, self.settings.bandwidth).sum(dim=-1).mean()
        return LossTerms(reconstruction + sparsity_coefficient * l0, reconstruction, l0, reconstruction.new_zeros(()), x_hat, f)
