"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    f = ReLU(TopK_k(x̄ W_enc + b_enc))           exactly k latents may be non-zero per input
    loss = mean_d (x − x̂)² + α · mean_d (e − ê)²  AuxK: ê reconstructs the residual e = x − x̂
                                                  from the top k_aux *dead* latents, α = 1/32

As there: decoder rows at unit norm (the parallel gradient projected out before each step,
renormalised after), W_enc = W_decᵀ at the start, b_dec at the geometric median (sae.b_dec_init).
A latent is dead when it has not fired for `dead_tokens` training tokens; the counter is a
buffer, so it is checkpointed with the weights and a resumed run continues it. The trainer updates
it after each batch (`observe_firing`), from the whole batch's counts when several ranks share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae.architectures.base import LossTerms, SparseAutoencoder
from sae.architectures.sparse import encode_decode
from sae.core.errors import ConfigError


@dataclass
class TopKSettings:
    k: int = 32
    """Latents kept per input (set by sae.k)."""
    k_aux: int = 256
    """Dead latents the AuxK loss may use per input (Gao et al.: a power of two near d_in / 2)."""
    aux_coefficient: float = 1 / 32
    """Weight α of the AuxK loss (Gao et al.: 1/32)."""
    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many training tokens is dead and joins the AuxK loss (Gao et al.: 10M)."""

    def __post_init__(self) -> None:
        for name in ("k", "k_aux", "dead_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sae.settings.{name}={getattr(self, name)} must be >= 1.")
        if self.aux_coefficient < 0:
            raise ConfigError(f"sae.settings.aux_coefficient={self.aux_coefficient} must be >= 0 (0 turns AuxK off).")


def keep_top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row, zeros elsewhere."""
    values, indices = pre.topk(min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


class TopKSAE(SparseAutoencoder):
    name = "topk"
    Settings = TopKSettings
    sparsity_knob = "k"
    supports_resampling = False
    dead_latent_remedy = "the AuxK loss on dead latents (sae.settings.k_aux, aux_coefficient, dead_tokens)"
    saelens_architecture = "topk"

    @classmethod
    def saelens_extra(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        # ReLU of the k largest pre-activations, selected on raw pre-activations (no decoder-norm rescaling).
        return {"k": int(cfg["settings"]["k"]), "rescale_acts_by_decoder_norm": False}, {}

    @classmethod
    def sparsify_k(cls, cfg: dict) -> int | None:
        return int(cfg["settings"]["k"])

    def add_state(self) -> None:
        if self.settings.k > self.n_features:
            raise ConfigError(
                f"sae.k={self.settings.k} exceeds the SAE's {self.n_features} features ({self.d_in} inputs): "
                "lower sae.k or raise sae.expansion."
            )
        self.register_buffer("tokens_since_fired", torch.zeros(self.n_features, dtype=torch.long))

    def reset_parameters(self) -> None:
        self._random_unit_decoder_tied_encoder_(1.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return keep_top_k(self.pre_activation(x), self.settings.k)

    def select(self, pre: torch.Tensor) -> torch.Tensor:
        """The training-time selection of latents (TopK: the same as inference)."""
        return keep_top_k(pre, self.settings.k)

    def loss(self, x: torch.Tensor, sparsity_coefficient: float) -> LossTerms:
        if self.settings.aux_coefficient == 0 or not self.dead_mask().any():
            # Without AuxK only the selected latents carry gradient: the sparse kernel applies.
            step = encode_decode(self, x, self.select, self.sparse_kernel)
            reconstruction = self.squared_error(x, step.x_hat).mean()
            return LossTerms.from_step(step, reconstruction)
        pre = self.pre_activation(x)
        f = self.select(pre)
        x_hat = self.decode(f)
        reconstruction = self.squared_error(x, x_hat).mean()
        auxiliary = self.auxk_loss(x, x_hat, pre) * self.settings.aux_coefficient
        return LossTerms(reconstruction + auxiliary, reconstruction, reconstruction.new_zeros(()), auxiliary, x_hat, f)

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.settings.dead_tokens

    def auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """MSE between the residual (scaled space, no gradient) and its reconstruction from the top-k_aux dead latents."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.settings.aux_coefficient == 0:
            return pre.new_zeros(()).float()
        residual = ((x - x_hat) * self.input_scale).detach()
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        f_aux = keep_top_k(dead_pre, min(self.settings.k_aux, n_dead))
        return (residual - f_aux @ self.W_dec).float().pow(2).mean()

    @torch.no_grad()
    def observe_firing(self, fire_counts: torch.Tensor, n_tokens: int) -> None:
        """A latent's counter restarts when it fired in the batch and grows by the batch's tokens otherwise."""
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fire_counts > 0, 0)

    @property
    def unit_norm_decoder(self) -> bool:
        return True  # Gao et al. 2024: decoder rows always at unit norm
