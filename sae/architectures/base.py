"""What every SAE architecture shares: the affine encoder/decoder, input scaling, pre-encoder bias, saving.

    x̄ = x·s − b_dec ;  f = σ(x̄ W_enc + b_enc) ;  x̂ = (f W_dec + b_dec) / s

`s` is a fixed input scale (1 unless the configuration scales inputs to E‖x‖ = √d); keeping it
inside the module means a loaded SAE reconstructs in the model's own units. Decoder directions
are the rows of `W_dec` (shape [n_features, d_in]). An architecture supplies the activation σ
(`encode`), its training loss, its initialisation and its settings dataclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sae.architectures.sparse import Forward


@dataclass
class LossTerms:
    """One batch's training objective: total = reconstruction + λ·sparsity + auxiliary."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    sparsity: torch.Tensor  # the penalised quantity (L1 or L0); 0 where sparsity is enforced by selection
    auxiliary: torch.Tensor  # e.g. the AuxK loss on dead latents; 0 where there is none
    x_hat: torch.Tensor
    features: torch.Tensor
    sparse_path: bool = False  # whether the batch ran the products over active latents only (sae/sparse.py)
    fire_counts: torch.Tensor | None = None  # inputs each latent fired on, where the sparse products counted them

    @torch.no_grad()
    def counted_fires(self) -> torch.Tensor:
        """Inputs each latent fired on: the sparse products' count, else a pass over the features."""
        if self.fire_counts is not None:
            return self.fire_counts
        with torch.no_grad():
            # Summed as int32 (exact below 2**31 inputs a batch): summing the mask to int64 first copies all of it to
            # int64, which made this pass ~2.5x slower (bench/train_throughput.py).
            return (self.features > 0).reshape(-1, self.features.shape[-1]).sum(dim=0, dtype=torch.int32).long()

    @classmethod
    def from_step(
        cls, step: Forward, reconstruction: torch.Tensor, sparsity: torch.Tensor | None = None, sparsity_coefficient: float = 0.0
    ) -> LossTerms:
        """The terms of a loss whose products ran through `sae.sparse.encode_decode`, without an auxiliary loss."""
        zero = reconstruction.new_zeros(())
        total = reconstruction if sparsity is None else reconstruction + sparsity_coefficient * sparsity
        return cls(
            total,
            reconstruction,
            zero if sparsity is None else sparsity,
            zero,
            step.x_hat,
            step.features,
            sparse_path=step.sparse,
            fire_counts=step.fire_counts,
        )


class SparseAutoencoder(nn.Module, ABC):
    """Base class: parameters, `decode`, input scale, decoder-norm helpers. Subclasses set the class attributes."""

    name: ClassVar[str]  # registry key, recorded in cfg.json
    Settings: ClassVar[type]  # the architecture's own settings dataclass
    # Which SAEConfig field sets its sparsity: "l1_coefficient" (a penalty λ) or "k" (latents kept).
    sparsity_knob: ClassVar[str] = "l1_coefficient"
    # Dead-neuron resampling (Bricken et al. 2023) re-initialises W_enc/W_dec/b_enc rows from badly
    # reconstructed inputs; architectures whose own mechanism revives latents refuse it.
    supports_resampling: ClassVar[bool] = False
    dead_latent_remedy: ClassVar[str] = "none"  # said in the start-up error when resampling is refused
    # How a training loss runs the products over active latents (sae/sparse.py): "auto", "dense" or
    # "sparse"; the trainer sets it from sae.sparse_kernel. Architectures without a sparse loss ignore it.
    sparse_kernel: str = "auto"
    # The architecture in SAELens's cfg.json (sae/formats/interop.py folds the input scale in first); None: none there.
    saelens_architecture: ClassVar[str | None] = None

    def __init__(self, d_in: int, n_features: int, settings: Any = None):
        super().__init__()
        self.d_in, self.n_features = int(d_in), int(n_features)
        self.settings = settings if settings is not None else self.Settings()
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.add_state()
        self.reset_parameters()

    def add_state(self) -> None:
        """Create the architecture's own parameters and buffers (before `reset_parameters` fills them)."""

    # --- what an architecture defines -------------------------------------------------------
    @abstractmethod
    def reset_parameters(self) -> None:
        """Data-independent initialisation (called by the constructor)."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., n_features] of inputs in the model's units; the one definition used everywhere."""

    @abstractmethod
    def loss(self, x: torch.Tensor, sparsity_coefficient: float) -> LossTerms:
        """The training objective on one batch (BatchTopK also updates its inference threshold here)."""

    def observe_firing(self, fire_counts: torch.Tensor, n_tokens: int) -> None:
        """After each training batch's loss: how often each latent fired in it (of `n_tokens` inputs), for the
        statistics an architecture keeps (TopK's dead-latent counters). Under DDP, the counts of the whole batch."""

    # --- shared -----------------------------------------------------------------------------
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def squared_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Per-input, per-dimension squared error in the SAE's scaled input space."""
        return ((x - x_hat) * self.input_scale).float().pow(2)

    @torch.no_grad()
    def initialise_from_data_(self, sample: torch.Tensor, scale_inputs: bool, b_dec_init: str) -> None:
        """Input scale (E‖x·s‖ = √d) and the pre-encoder bias (geometric median, mean, or 0) from a sample."""
        if scale_inputs:
            self.input_scale.fill_(self.d_in**0.5 / sample.norm(dim=1).mean().clamp_min(1e-12))
        scaled = sample[:4096].float() * self.input_scale
        if b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(scaled))
        elif b_dec_init == "mean":
            self.b_dec.copy_(scaled.mean(dim=0))

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether decoder rows are held at unit norm; architectures with the setting read it from there."""
        return bool(getattr(self.settings, "unit_norm_decoder", False))

    def before_optimizer_step_(self) -> None:
        """Hook after backward, before the optimizer step: a unit-norm decoder loses its parallel gradient."""
        if self.unit_norm_decoder:
            self.remove_parallel_decoder_grad_()

    def after_optimizer_step_(self) -> None:
        """Hook after the optimizer step: a unit-norm decoder is renormalised."""
        if self.unit_norm_decoder:
            self.normalize_decoder_()

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

    @torch.no_grad()
    def _random_unit_decoder_tied_encoder_(self, decoder_norm: float = 1.0) -> None:
        """Random decoder directions at `decoder_norm`, W_enc = W_decᵀ, b_enc = 0 (Gao et al. 2024; Conerly et al. 2024)."""
        bound = 1.0 / self.d_in**0.5  # kaiming-uniform (a=√5) on W_dec, fan-in d_in
        self.W_dec.uniform_(-bound, bound)
        self.W_dec.mul_(decoder_norm / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()

    @classmethod
    def saelens_extra(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """The SAELens cfg keys and tensors this architecture needs beyond W_enc, b_enc, W_dec and b_dec, from our
        (folded) tensors and cfg.json."""
        return {}, {}

    @classmethod
    def sparsify_k(cls, cfg: dict) -> int | None:
        """sparsify's `k` for this SAE (sparsify runs TopK-style SAEs only); None when it has no equivalent."""
        return None

    def config_dict(self) -> dict:
        """What cfg.json needs to rebuild this SAE: shape, architecture and its settings."""
        return {"d_in": self.d_in, "n_features": self.n_features, "architecture": self.name, "settings": asdict(self.settings)}


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
