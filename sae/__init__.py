"""Sparse autoencoders on language-model activations (Towards Monosemanticity, reproduced)."""

from sae.io import load_sae, save_sae
from sae.model import SparseAutoencoder

__all__ = ["SparseAutoencoder", "load_sae", "save_sae"]
