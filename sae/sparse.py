"""A training forward/backward that touches only the active latents.

With L0 ≈ 50 of 4,608 features, five of the six matrix products of a training step involve only
the ~1% of (input, latent) pairs that fire: the decoder product f·W_dec, its weight gradient,
the gradient reaching the active latents (grad_x̂ · W_dec,i), and the encoder's gradients
(grad W_enc = x̄ᵀ·G and grad x̄ = G·W_encᵀ, with G the pre-activation gradient, zero where a
latent is off). Only the encoder's forward product x̄·W_enc is inherently dense. Here the sparse
products are gathers and weighted sums of rows — `embedding_bag` (sum mode with per-sample
weights) and `sampled_addmm` — which on CPU beat both a dense matmul at low density and
`torch.sparse.mm` on CSR tensors (measured: bench/sparse_step.py). When too many latents are
active (early in training, high L0) the same autograd function runs the dense products instead,
decided per batch from the active fraction.

The activation σ may be any selection f = pre ⊙ mask (ReLU, TopK, BatchTopK): the gradient of f
with respect to the pre-activation is taken as 1 where f ≠ 0 and 0 elsewhere, which is what
autograd gives for those. Gradients equal the dense path's up to float32 rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KERNELS = ("auto", "dense", "sparse")
# Active fraction L0/n above which "auto" runs the dense products. On a 2-core CPU at d 576 → 4,608
# the sparse step was 1.4× faster at 1% active, 1.2× at 5%, and 0.8× at 22% (bench/sparse_step.py).
MAX_SPARSE_DENSITY = 0.1

Activation = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Forward:
    x_hat: torch.Tensor
    features: torch.Tensor
    sparse: bool  # whether this batch took the sparse products


def sparse_kernel_applies(kernel: str, x: torch.Tensor) -> bool:
    """Whether `kernel` runs the autograd function here: "auto" only for float32 CPU training without autocast."""
    if kernel not in KERNELS:
        raise ValueError(f"sparse kernel {kernel!r}: choose one of {', '.join(KERNELS)}.")
    if kernel == "dense" or not torch.is_grad_enabled():
        return False
    if kernel == "sparse":
        return True
    # GPUs run dense products at a far higher rate than gathers; keep the dense path there.
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def encode_decode(
    sae: torch.nn.Module,
    x: torch.Tensor,
    activation: Activation,
    kernel: str = "auto",
    max_density: float = MAX_SPARSE_DENSITY,
) -> Forward:
    """x̂ and f = activation(pre-activation) of `sae` (a sae.architectures.SparseAutoencoder) on `x`.

    `kernel`: "dense" is the module's own pre_activation and decode; "sparse" always takes the sparse products;
    "auto" takes them when at most `max_density` of the (input, latent) pairs are active.
    """
    if not sparse_kernel_applies(kernel, x):
        f = activation(sae.pre_activation(x))
        return Forward(sae.decode(f), f, False)
    density_limit = 1.0 if kernel == "sparse" else max_density
    f, recon, sparse = _EncodeDecode.apply(
        x, sae.input_scale, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, activation, density_limit
    )
    x_hat = (recon + sae.b_dec) / sae.input_scale
    return Forward(x_hat, f, sparse)


class _EncodeDecode(torch.autograd.Function):
    """(x, s, W_enc, b_enc, W_dec, b_dec) → (f, f·W_dec, took_sparse_path); the decoder bias is added outside."""

    @staticmethod
    def forward(ctx, x, scale, W_enc, b_enc, W_dec, b_dec, activation, max_density):
        ctx.set_materialize_grads(False)
        x_bar = x * scale - b_dec
        f = activation(torch.addmm(b_enc, x_bar, W_enc))
        batch, n = f.shape
        ctx.sparse = max_density >= 1 or int(torch.count_nonzero(f)) <= max_density * f.numel()
        ctx.scale = scale
        if not ctx.sparse:
            ctx.save_for_backward(x_bar, f, W_enc, W_dec)
            return f, f @ W_dec, False
        active = f.view(-1).nonzero().squeeze(1)  # row-major: sorted by input, then latent
        rows, latents = active.div(n, rounding_mode="floor"), active.remainder(n)
        values = f.view(-1).index_select(0, active)
        row_starts = _starts(rows, batch)
        recon = F.embedding_bag(latents, W_dec, row_starts, mode="sum", per_sample_weights=values)
        ctx.save_for_backward(x_bar, W_enc, W_dec, rows, latents, values, row_starts)
        ctx.shape = (batch, n)
        return f, recon, True

    @staticmethod
    def backward(ctx, grad_f, grad_recon, _):
        if ctx.sparse:
            return _sparse_backward(ctx, grad_f, grad_recon)
        return _dense_backward(ctx, grad_f, grad_recon)


def _starts(index: torch.Tensor, size: int) -> torch.Tensor:
    """Start offset of each group 0..size-1 in a sorted index (empty groups repeat the next start)."""
    counts = torch.bincount(index, minlength=size)
    return torch.cumsum(counts, 0) - counts


def _dense_backward(ctx, grad_f, grad_recon):
    x_bar, f, W_enc, W_dec = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_active = torch.zeros_like(f) if grad_f is None else grad_f
    if grad_recon is not None:
        grad_active = grad_active + grad_recon @ W_dec.T
    grad_pre = grad_active * (f != 0)
    grad_b_enc = grad_pre.sum(0)
    grad_W_enc = x_bar.T @ grad_pre if needs[2] else None
    grad_W_dec = f.T @ grad_recon if needs[4] and grad_recon is not None else None
    grad_b_dec = -(W_enc @ grad_b_enc) if needs[5] else None
    grad_x = (grad_pre @ W_enc.T) * ctx.scale if needs[0] else None
    return grad_x, None, grad_W_enc, grad_b_enc if needs[3] else None, grad_W_dec, grad_b_dec, None, None


def _sparse_backward(ctx, grad_f, grad_recon):
    x_bar, W_enc, W_dec, rows, latents, values, row_starts = ctx.saved_tensors
    needs = ctx.needs_input_grad
    batch, n = ctx.shape
    # The gradient at each active (input, latent): ∂L/∂f there plus grad_x̂[input] · W_dec[latent].
    grad_values = torch.zeros_like(values)
    if grad_f is not None:
        grad_values = grad_values + grad_f.reshape(-1).index_select(0, rows * n + latents)
    if grad_recon is not None and len(values):
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use of it
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                _row_pointers(row_starts, len(values)), latents, values, (batch, n), check_invariants=False
            )
        grad_values = grad_values + torch.sparse.sampled_addmm(pattern, grad_recon, W_dec.T, beta=0).values()
    grad_b_enc = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, latents, grad_values)

    # Per-latent sums over the inputs where it fired: the same active pairs, ordered by latent.
    by_latent = torch.argsort(latents, stable=True)
    inputs_by_latent = rows.index_select(0, by_latent)
    latent_starts = _starts(latents, n)
    grad_W_enc = grad_W_dec = grad_x = None
    if needs[2]:
        grad_W_enc = F.embedding_bag(
            inputs_by_latent, x_bar, latent_starts, mode="sum", per_sample_weights=grad_values.index_select(0, by_latent)
        ).T
    if needs[4] and grad_recon is not None:
        grad_W_dec = F.embedding_bag(
            inputs_by_latent, grad_recon, latent_starts, mode="sum", per_sample_weights=values.index_select(0, by_latent)
        )
    grad_b_dec = -(W_enc @ grad_b_enc) if needs[5] else None
    if needs[0]:
        grad_x = (
            F.embedding_bag(latents, W_enc.T.contiguous(), row_starts, mode="sum", per_sample_weights=grad_values) * ctx.scale
        )
    return grad_x, None, grad_W_enc, grad_b_enc if needs[3] else None, grad_W_dec, grad_b_dec, None, None


def _row_pointers(row_starts: torch.Tensor, nnz: int) -> torch.Tensor:
    return torch.cat([row_starts, row_starts.new_full((1,), nnz)])
