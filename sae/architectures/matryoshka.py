"""Matryoshka SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders";
Nabeshima 2025, "Matryoshka Sparse Autoencoders").

The dictionary is read as nested prefixes, its first m_1 < m_2 < … < m_G = n latents, and each prefix is
trained to reconstruct the input on its own:

    f = BatchTopK_k(x̄ W_enc + b_enc)                   one selection over the whole dictionary
    x̂_g = (Σ_{i < m_g} f_i W_dec,i + b_dec) / s        the reconstruction from the first m_g latents
    loss = (1/G) Σ_g mean_d (x − x̂_g)² + α · AuxK      AuxK on the residual of the full reconstruction x̂_G

A latent in group j (m_{j−1} ≤ i < m_j) is trained by every prefix that holds it, g ≥ j, so the first
latents must carry the input's most general directions by themselves: a general feature cannot be split
into ("absorbed by") later, more specific latents without the early prefixes' reconstructions suffering.

As in Bussmann's and saprmarks/dictionary_learning's Matryoshka BatchTopK: BatchTopK selection, the mean
of the prefix losses (SAELens sums them; with Adam that differs only in the weight AuxK gets), AuxK on the
full reconstruction's residual, TopK's decoder handling and initialisation (unit-norm rows, W_enc = W_decᵀ,
b_dec at the geometric median), and at inference BatchTopK's one threshold θ: a JumpReLU with θ for every
latent, which is how SAELens saves its Matryoshka SAEs. The prefixes default to Bussmann's groups of
n/16, n/16, n/8, n/4 and n/2 latents (prefixes of n/16, n/8, n/4, n/2 and n).

The prefix reconstructions run the dense products: the sparse kernel (sae/architectures/sparse.py) carries
one reconstruction's gradient, and here each latent's decoder row gets the errors of its own prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch

from sae.architectures.base import LossTerms
from sae.architectures.batchtopk import BatchTopKSAE, BatchTopKSettings
from sae.core.errors import ConfigError


@dataclass
class MatryoshkaSettings(BatchTopKSettings):
    prefix_fractions: list[float] = field(default_factory=lambda: [1 / 16, 1 / 8, 1 / 4, 1 / 2])
    """Sizes of the nested prefixes that reconstruct on their own, as fractions of the dictionary, increasing
    in (0, 1); the whole dictionary is always the last prefix (Bussmann et al.: 1/16, 1/8, 1/4, 1/2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        fractions = [float(f) for f in self.prefix_fractions]
        if not all(0 < f < 1 for f in fractions) or not increasing(fractions):
            raise ConfigError(
                f"sae.settings.prefix_fractions={fractions} must increase strictly within (0, 1), e.g. "
                "[0.0625, 0.125, 0.25, 0.5] (the whole dictionary is always the last prefix)."
            )


def increasing(values: list) -> bool:
    return all(a < b for a, b in pairwise(values))


def prefix_sizes(fractions: list[float], n_features: int) -> list[int]:
    """Latents in each nested prefix: round(fraction · n) for each fraction, then n."""
    return [round(f * n_features) for f in fractions] + [n_features]


class MatryoshkaSAE(BatchTopKSAE):
    name = "matryoshka"
    Settings = MatryoshkaSettings
    # Inference is BatchTopK's (pre > θ): SAELens saves its Matryoshka BatchTopK SAEs as JumpReLU SAEs too.
    saelens_architecture = "jumprelu"

    def add_state(self) -> None:
        super().add_state()
        sizes = prefix_sizes(self.settings.prefix_fractions, self.n_features)
        if sizes[0] < 1 or not increasing(sizes):
            raise ConfigError(
                f"sae.settings.prefix_fractions={list(self.settings.prefix_fractions)} give prefixes of {sizes} latents "
                f"in an SAE of {self.n_features}: each must hold at least one latent more than the one before; "
                "use fewer or wider prefixes, or raise sae.expansion."
            )
        self.prefix_sizes = sizes

    def prefix_reconstructions(self, f: torch.Tensor) -> list[torch.Tensor]:
        """x̂_g · s for every prefix g, in the SAE's scaled input space (each adds its group's latents to the last)."""
        groups = [b - a for a, b in zip([0, *self.prefix_sizes[:-1]], self.prefix_sizes, strict=True)]
        # split (not slicing): its backward concatenates the groups' gradients in one tensor
        partial, out = self.b_dec, []
        for f_group, W_group in zip(f.split(groups, dim=-1), self.W_dec.split(groups), strict=True):
            partial = partial + f_group @ W_group
            out.append(partial)
        return out

    def loss(self, x: torch.Tensor, sparsity_coefficient: float) -> LossTerms:
        pre = self.pre_activation(x)
        f = self.select(pre)
        target = (x * self.input_scale).float()
        reconstructions = self.prefix_reconstructions(f)
        errors = [(target - r.float()).pow(2).mean() for r in reconstructions]
        reconstruction = torch.stack(errors).mean()
        x_hat = reconstructions[-1] / self.input_scale  # the whole dictionary's: decode(f)
        auxiliary = self.auxk_loss(x, x_hat, pre) * self.settings.aux_coefficient
        return LossTerms(reconstruction + auxiliary, reconstruction, reconstruction.new_zeros(()), auxiliary, x_hat, f)

    @torch.no_grad()
    def prefix_errors(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error (scaled space, per dimension) of each prefix's reconstruction at inference."""
        target = (x * self.input_scale).float()
        return torch.stack([(target - r.float()).pow(2).mean() for r in self.prefix_reconstructions(self.encode(x))])
