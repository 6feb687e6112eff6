"""Random SAEs with every term of the export fold non-trivial, and how to compare two SAEs as functions."""

from __future__ import annotations

import torch

from sae.architectures import ARCHITECTURES, BatchTopKSAE, SparseAutoencoder, build_sae

PROVENANCE = {"model": "embedded:smollm2", "layer": 2, "hook": "hook_mlp_out", "hook_name": "blocks.2.hook_mlp_out"}


K = 8  # active latents of the TopK-style test SAEs


def random_sae(d_in=24, n=96, scale=3.7, seed=0, arch="relu") -> SparseAutoencoder:
    """Non-trivial weights, biases and thresholds, and an input scale ≠ 1, so every term of the fold is exercised."""
    torch.manual_seed(seed)
    sae = build_sae(arch, d_in, n, k=K if ARCHITECTURES[arch].sparsity_knob == "k" else None)
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / d_in**0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
        sae.input_scale.fill_(scale)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.empty(n).uniform_(0.05, 0.8).log())
        if isinstance(sae, BatchTopKSAE):  # BatchTopK and Matryoshka: one inference threshold
            sae.threshold.fill_(0.4)
    return sae


def assert_same_sae(a: SparseAutoencoder, b: SparseAutoencoder, x: torch.Tensor) -> None:
    fa, fb = a.encode(x), b.encode(x)
    torch.testing.assert_close(fb, fa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.decode(fa), a.decode(fa), rtol=1e-5, atol=1e-5)
