"""How good an SAE is, measured on held-out text, in plain torch.

* Spliced cross-entropy: the language model's next-token loss with the hooked activation clean,
  zero-ablated, or replaced by the SAE's reconstruction. BOS positions keep their clean value in
  both patched runs (the SAE never trains on BOS, whose activation is an outlier), so the two
  patched runs differ only in what is spliced in. Reconstruction score = (zero − recon)/(zero − clean);
  KL score = (KL_zero − KL_recon)/KL_zero, KL taken from the clean next-token distribution.
* Activation statistics accumulated over a token stream: L0, MSE, L1, explained variance (about
  the mean), cosine(x, x̂), ‖x̂‖/‖x‖, and per-feature firing counts for the density metrics.
* "Rare features are more similar": mean pairwise cosine of decoder rows inside a group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sae.architectures import SparseAutoencoder
from sae.config import DataConfig
from sae.metrics import recovered_fraction
from sae.text import batched, iter_contexts, iter_texts

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


def heldout_tokens(bridge, data_cfg: DataConfig, n_tokens: int, bos_id: int) -> torch.Tensor:
    """The first ⌈n_tokens / context_length⌉ held-out contexts, [n_contexts, context_length]."""
    n_contexts = max(1, -(-n_tokens // data_cfg.context_length))
    rows = []
    for row in iter_contexts(iter_texts(data_cfg, "heldout"), bridge.tokenizer, data_cfg.context_length, bos_id):
        rows.append(row)
        if len(rows) == n_contexts:
            break
    if not rows:
        raise ValueError("the held-out split produced no tokens; check data.* and data.holdout_every.")
    return torch.stack(rows)


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


# Bytes one chunk's feature activations may take (float32), with room for the encoder's temporaries.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


def rows_per_chunk(n_features: int, budget_bytes: int = DEFAULT_MEMORY_BUDGET, element_bytes: int = 4) -> int:
    """Rows whose [rows, n_features] activations fit the budget; encoding holds ~3 such tensors at once
    (pre-activation, bias added, ReLU), so a quarter of the budget goes to each with room to spare."""
    return max(1, budget_bytes // (4 * n_features * element_bytes))


class ActivationStats:
    """Streaming reconstruction and sparsity statistics.

    Only the accumulators are float64 (so long streams stay exact); the [rows, n_features] feature
    activations stay in the SAE's dtype and are never copied, and `activation_stats` feeds them in
    chunks of rows bounded by a memory budget: a 256x SAE of a 768-wide model needs ~0.8 MB per row.
    """

    def __init__(self, n_features: int, device: torch.device | str = "cpu"):
        self.fire_counts = torch.zeros(n_features, dtype=torch.long, device=device)
        self.tokens = 0
        self._sums = torch.zeros(6, dtype=torch.float64, device=device)  # l0, l1, sq_err, sq_norm, cosine, norm_ratio
        self._sum_x: torch.Tensor | None = None
        self._d = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        fired = f > 0
        per_feature = fired.sum(dim=0)
        self.fire_counts += per_feature.to(self.fire_counts.device)
        self.tokens += len(x)
        self._d = x.shape[1]
        x, x_hat = x.double(), x_hat.double()  # [rows, d_in]: small
        l1 = torch.linalg.vector_norm(f, ord=1, dim=1).double().sum()  # a reduction: no copy of f
        x_norm, x_hat_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        chunk = torch.stack(
            [
                per_feature.sum().double(),
                l1,
                (x - x_hat).pow(2).sum(),
                x.pow(2).sum(),
                F.cosine_similarity(x, x_hat, dim=-1).sum(),
                (x_hat_norm / x_norm.clamp_min(1e-12)).sum(),
            ]
        )
        self._sums += chunk.to(self._sums.device)
        sum_x = x.sum(dim=0).to(self._sums.device)
        self._sum_x = sum_x if self._sum_x is None else self._sum_x + sum_x

    def result(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        l0, l1, sq_err, sq_norm, cosine, norm_ratio = self._sums.tolist()
        # Σ‖x − mean‖² = Σ‖x‖² − n‖mean‖²
        variance_sum = sq_norm - (self._sum_x.pow(2).sum().item() / n if self._sum_x is not None else 0.0)
        return {
            "l0": l0 / n,
            "l1": l1 / n,
            "mse": sq_err / (n * max(self._d, 1)),
            "explained_variance": 1 - sq_err / max(variance_sum, 1e-12),
            "cosine_similarity": cosine / n,
            "norm_ratio": norm_ratio / n,
            "tokens": self.tokens,
        }

    def counts(self) -> torch.Tensor:
        """Per-feature firing counts, on the CPU."""
        return self.fire_counts.cpu()


@torch.no_grad()
def activation_stats(
    sae: SparseAutoencoder, batches: Iterable[torch.Tensor], max_tokens: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> ActivationStats:
    """Statistics over up to `max_tokens` rows of `batches`, on the SAE's device, in budget-sized chunks."""
    p = sae.W_dec
    stats = ActivationStats(sae.n_features, p.device)
    step = rows_per_chunk(sae.n_features, memory_budget, p.element_size())
    for batch in batches:
        batch = batch[: max_tokens - stats.tokens]
        for start in range(0, len(batch), step):
            x = batch[start : start + step].to(p.device, p.dtype)
            x_hat, f = sae(x)
            stats.update(x, x_hat, f)
            del x_hat, f
        if stats.tokens >= max_tokens:
            break
    return stats


def mean_pairwise_cosine(directions: torch.Tensor) -> float:
    """Mean cosine over distinct pairs, O(n·d): for unit vectors Σ_{i≠j} uᵢ·uⱼ = ‖Σuᵢ‖² − n."""
    n = len(directions)
    if n < 2:
        return float("nan")
    u = F.normalize(directions.double(), dim=1)
    return ((u.sum(dim=0).pow(2).sum() - n) / (n * (n - 1))).item()


def pairwise_cosines(directions: torch.Tensor, max_vectors: int = 2000, seed: int = 0) -> torch.Tensor:
    """Cosines of all distinct pairs among (at most `max_vectors` random) rows, for histograms."""
    if len(directions) > max_vectors:
        directions = directions[torch.randperm(len(directions), generator=torch.Generator().manual_seed(seed))[:max_vectors]]
    u = F.normalize(directions.float(), dim=1)
    sims = u @ u.T
    return sims[torch.triu_indices(len(u), len(u), offset=1).unbind()]
