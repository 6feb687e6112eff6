"""The sparse autoencoder of "Towards Monosemanticity" (Anthropic 2023), in plain torch.

    x̄ = x·s − b_d ;  f = ReLU(W_e x̄ + b_e) ;  x̂ = (W_d f + b_d) / s

`s` is a fixed input scale (1 unless the 2024 recipe scales inputs to E‖x‖ = √d); keeping it
inside the module means a loaded SAE reconstructs in the model's own units.
Decoder directions are the rows of `W_dec` (shape [n_features, d_in]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SAEShape:
    d_in: int
    n_features: int


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, n_features: int):
        super().__init__()
        self.shape = SAEShape(d_in, n_features)
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.reset_parameters()

    def reset_parameters(self, decoder_norm: float | None = 1.0, tie_encoder: bool = False) -> None:
        """Kaiming-uniform, untied; the 2024 recipe instead sets W_e = W_dᵀ with small decoder norms."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
            if decoder_norm is not None:
                self.W_dec.mul_(decoder_norm / self.W_dec.norm(dim=1, keepdim=True))
            if tie_encoder:
                self.W_enc.copy_(self.W_dec.T)
            else:
                nn.init.kaiming_uniform_(self.W_enc, a=math.sqrt(5))

    @property
    def d_in(self) -> int:
        return self.shape.d_in

    @property
    def n_features(self) -> int:
        return self.shape.n_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x_bar = x * self.input_scale - self.b_dec
        return torch.relu(x_bar @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Project out the gradient component along each (unit) decoder direction, so Adam cannot grow norms."""
        if self.W_dec.grad is None:
            return
        d = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        parallel = (self.W_dec.grad * d).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * d)

    def config_dict(self) -> dict:
        return asdict(self.shape)


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to `points`."""
    points = points.double()
    median = points.mean(dim=0)
    for _ in range(max_iter):
        dist = (points - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        shift = (new - median).norm()
        median = new
        if shift <= tol * max(1.0, median.norm().item()):
            break
    return median.float()
