"""Spliced cross-entropy: what the language model loses when the hooked activation is replaced, in plain torch.

The model's next-token loss with the hooked activation clean, zero-ablated, or replaced by the SAE's
reconstruction. BOS positions keep their clean value in both patched runs (the SAE never trains on
BOS, whose activation is an outlier), so the two patched runs differ only in what is spliced in.
Reconstruction score = (zero − recon)/(zero − clean); KL score = (KL_zero − KL_recon)/KL_zero, KL
taken from the clean next-token distribution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from sae.architectures import SparseAutoencoder
from sae.evaluation.measures import recovered_fraction
from sae.text.contexts import batched

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SplicedLoss:
    """Mean next-token CE (nats) and KL from the clean distribution, over `tokens` predictions."""

    ce_clean: float
    ce_zero_ablated: float
    ce_reconstructed: float
    kl_zero_ablated: float
    kl_reconstructed: float
    tokens: int

    @property
    def reconstruction_score(self) -> float:
        return recovered_fraction(self.ce_zero_ablated, self.ce_reconstructed, self.ce_clean)

    @property
    def kl_score(self) -> float:
        return recovered_fraction(self.kl_zero_ablated, self.kl_reconstructed, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "reconstruction_score": self.reconstruction_score, "kl_score": self.kl_score}


def sae_reconstruction(sae: SparseAutoencoder) -> Reconstruct:
    """x ↦ x̂ in the activation's own dtype and device."""

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        p = sae.W_dec
        return sae(x.to(p.device, p.dtype))[0].to(x.device, x.dtype)

    return reconstruct


# Positions whose vocab-wide logits are reduced together: a few MB per run, so every pass below reads them
# from cache rather than streaming [batch, positions, vocab] temporaries through memory.
LOGIT_ROWS = 32


def next_token_sums(logits: list[torch.Tensor], tokens: torch.Tensor, rows: int = LOGIT_ROWS) -> torch.Tensor:
    """Σ next-token CE of each run, then Σ KL(clean ‖ run) of each patched run (float64, on the logits' device).

    `logits[0]` is the clean run's, each [batch, positions, vocab]. With lse = logsumexp(x), CE = lse − x[target]
    and KL(p ‖ q) = Σ p·(x_p − x_q) + lse_q − lse_p, so no vocab-wide log-probabilities are ever stored."""
    sums = torch.zeros(2 * len(logits) - 1, dtype=torch.float64, device=logits[0].device)
    n_pred = tokens.shape[1] - 1
    for b in range(tokens.shape[0]):
        for start in range(0, n_pred, rows):
            stop = min(start + rows, n_pred)
            target = tokens[b, start + 1 : stop + 1, None]
            x = [run[b, start:stop].float() for run in logits]
            lse = [torch.logsumexp(v, dim=-1) for v in x]
            ce = [(lse_v - v.gather(-1, target)[:, 0]).sum() for v, lse_v in zip(x, lse, strict=True)]
            p = torch.softmax(x[0], dim=-1)
            kl = [(torch.linalg.vecdot(p, x[0] - v) + lse_v - lse[0]).sum() for v, lse_v in zip(x[1:], lse[1:], strict=True)]
            sums += torch.stack([*ce, *kl]).double()
    return sums


def _batch_key(batch: torch.Tensor) -> str:
    return hashlib.sha1(batch.cpu().numpy().tobytes()).hexdigest() + str(tuple(batch.shape))


@torch.no_grad()
def spliced_loss(
    bridge,
    hook_name: str,
    tokens: torch.Tensor,
    reconstruct: Reconstruct,
    bos_id: int,
    batch_size: int = 8,
    zero_ablated: dict[str, torch.Tensor] | None = None,
) -> SplicedLoss:
    """Cross-entropy and KL with the hook clean, zero-ablated and reconstructed (BOS kept clean).

    The zero-ablated run does not depend on the SAE: `zero_ablated` keeps its sums per batch of tokens, so
    later calls with the same dict (the next evaluation, the other SAEs of a group) run the model twice per
    batch instead of three times. Keep one dict per model and hook."""
    sums = torch.zeros(5, dtype=torch.float64)  # ce clean, zero, recon; kl zero, recon
    count = 0
    device = bridge.cfg.device
    for batch in batched(iter(tokens), batch_size):
        batch = batch.to(device)
        keep_clean = (batch == bos_id)[..., None]

        def splice(replace: Callable[[torch.Tensor], torch.Tensor], keep_clean: torch.Tensor = keep_clean):
            def hook(act, hook=None):
                return torch.where(keep_clean, act, replace(act))

            return [(hook_name, hook)]

        clean = bridge(batch, return_type="logits")
        recon = bridge.run_with_hooks(batch, fwd_hooks=splice(reconstruct), return_type="logits")
        key = _batch_key(batch) if zero_ablated is not None else None
        if key is not None and key in zero_ablated:
            ce_clean, ce_recon, kl_recon = next_token_sums([clean, recon], batch).cpu()
            ce_zero, kl_zero = zero_ablated[key]
        else:
            zero = bridge.run_with_hooks(batch, fwd_hooks=splice(torch.zeros_like), return_type="logits")
            ce_clean, ce_recon, ce_zero, kl_recon, kl_zero = next_token_sums([clean, recon, zero], batch).cpu()
            if key is not None:
                zero_ablated[key] = torch.stack([ce_zero, kl_zero])
        sums += torch.stack([ce_clean, ce_zero, ce_recon, kl_zero, kl_recon])
        count += batch.shape[0] * (batch.shape[1] - 1)
    mean = (sums / count).tolist()
    return SplicedLoss(*mean, tokens=count)
