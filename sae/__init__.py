"""Sparse autoencoders on language-model activations (Towards Monosemanticity, reproduced)."""

from sae.architectures import ARCHITECTURES, SparseAutoencoder
from sae.io import load_sae, save_sae

__all__ = ["ARCHITECTURES", "SparseAutoencoder", "load_sae", "save_sae"]
