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
decided per batch from the active fraction. On a GPU the dense products run so fast that the
gathers pay only for wide SAEs (16k latents and more) at a lower active fraction.

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
# Where "auto" takes the sparse products: (fewest latents, highest active fraction L0/n), measured as
# training-step speed of the sparse path over the dense one (bench/sparse_step.py, d_in 576; the README
# has the tables). Below the fewest latents "auto" runs the plain dense path: on a GPU the per-batch
# check of the active fraction is a host sync, which costs ~10% of a fast step.
AUTO_SPARSE = {
    # 2-core CPU, n 4,608: 1.4× at 1% of the pairs active, 1.2× at 5%, 0.8× at 22%.
    "cpu": (0, 0.1),
    # H200, float32 products: ~1.0× for n 4,608 at 0.4-1.4% active (0.7× at 5.6%); 1.5-2.3× for n 18,432 at
    # 0.15-1.4%; 2.4-3.0× for n 73,728 at 0.05-0.4%.
    "cuda": (16_384, 0.02),
    # H200, TF32 products (torch.set_float32_matmul_precision("high")), the same SAEs: 0.5-0.7× for n 4,608;
    # 1.0× for n 18,432 at 0.15-0.4%; 1.55×, 1.4×, 1.1× for n 73,728 at 0.05%, 0.14%, 0.4%.
    "cuda_tf32": (65_536, 0.002),
}

Activation = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Forward:
    x_hat: torch.Tensor
    features: torch.Tensor
    sparse: bool  # whether this batch took the sparse products
    # Inputs each latent fired on, when the sparse products had them for free (a count of the active pairs).
    fire_counts: torch.Tensor | None = None


def sparse_kernel_applies(kernel: str, x: torch.Tensor) -> bool:
    """Whether `kernel` runs the autograd function here: "auto" only for float32 CPU or CUDA training without autocast."""
    _check(kernel)
    if kernel == "dense" or not torch.is_grad_enabled():
        return False
    if kernel == "sparse":
        return True
    device = x.device.type
    return device in ("cpu", "cuda") and x.dtype == torch.float32 and not torch.is_autocast_enabled(device)


def _check(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"sparse kernel {kernel!r}: choose one of {', '.join(KERNELS)}.")


def _density_limit(kernel: str, device_type: str, n_features: int) -> float | None:
    """The active fraction up to which `kernel` ("sparse" or "auto") takes the sparse products; None: never."""
    return 1.0 if kernel == "sparse" else auto_density_limit(device_type, n_features, torch.get_float32_matmul_precision())


def auto_density_limit(device_type: str, n_features: int, matmul_precision: str = "highest") -> float | None:
    """The active fraction up to which "auto" takes the sparse products here; None: never (no per-batch check)."""
    key = device_type if device_type != "cuda" or matmul_precision == "highest" else "cuda_tf32"
    fewest_latents, max_density = AUTO_SPARSE.get(key, AUTO_SPARSE["cpu"])
    return max_density if n_features >= fewest_latents else None


def encode_decode(
    sae: torch.nn.Module,
    x: torch.Tensor,
    activation: Activation,
    kernel: str = "auto",
    max_density: float | None = None,
) -> Forward:
    """x̂ and f = activation(pre-activation) of `sae` (a sae.architectures.SparseAutoencoder) on `x`.

    `kernel`: "dense" is the module's own pre_activation and decode; "sparse" always takes the sparse products;
    "auto" takes them when at most `max_density` of the (input, latent) pairs are active (by default the
    measured limit for x's device and the SAE's width, `auto_density_limit`).
    """
    density_limit = None
    if sparse_kernel_applies(kernel, x):
        auto_set = kernel == "auto" and max_density is not None
        density_limit = max_density if auto_set else _density_limit(kernel, x.device.type, sae.W_enc.shape[1])
    if density_limit is None:
        f = activation(sae.pre_activation(x))
        return Forward(sae.decode(f), f, False)
    f, recon, sparse, fire_counts = _EncodeDecode.apply(
        x, sae.input_scale, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, activation, density_limit
    )
    x_hat = (recon + sae.b_dec) / sae.input_scale
    return Forward(x_hat, f, sparse, fire_counts)


class _EncodeDecode(torch.autograd.Function):
    """(x, s, W_enc, b_enc, W_dec, b_dec) → (f, f·W_dec, took_sparse_path, fire counts or None); the decoder
    bias is added outside."""

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
            return f, f @ W_dec, False, None
        recon, rows, latents, values, row_starts = _gather_decode(f, W_dec)
        ctx.save_for_backward(x_bar, W_enc, W_dec, rows, latents, values, row_starts)
        ctx.shape = (batch, n)
        fire_counts = torch.bincount(latents, minlength=n)
        ctx.mark_non_differentiable(fire_counts)
        return f, recon, True, fire_counts

    @staticmethod
    def backward(ctx, grad_f, grad_recon, *_):
        if ctx.sparse:
            return _sparse_backward(ctx, grad_f, grad_recon)
        return _dense_backward(ctx, grad_f, grad_recon)


def decode(sae: torch.nn.Module, f: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """`sae.decode(f)` outside autograd (resampling's scoring pass), summing only the active latents' decoder
    rows when "auto" finds at most the measured fraction of them active, as a training step would."""
    _check(kernel)
    limit = None
    if kernel != "dense" and f.dim() == 2 and f.dtype == torch.float32 and not torch.is_grad_enabled():
        limit = _density_limit(kernel, f.device.type, f.shape[1])
    if limit is None or int(torch.count_nonzero(f)) > limit * f.numel():
        return sae.decode(f)
    recon = _gather_decode(f, sae.W_dec)[0]
    return (recon + sae.b_dec) / sae.input_scale


def _gather_decode(f: torch.Tensor, W_dec: torch.Tensor):
    """f·W_dec as a weighted sum of the active latents' rows; also the active pairs (rows, latents, values)
    in row-major order and each input's offset among them."""
    batch, n = f.shape
    flat = f.reshape(-1)
    active = flat.nonzero().squeeze(1)  # row-major: sorted by input, then latent
    rows, latents = active.div(n, rounding_mode="floor"), active.remainder(n)
    values = flat.index_select(0, active)
    row_starts = _starts(rows, batch)
    recon = F.embedding_bag(latents, W_dec, row_starts, mode="sum", per_sample_weights=values)
    return recon, rows, latents, values, row_starts


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
