"""Dead-neuron resampling ("Towards Monosemanticity", 2023), in plain torch.

A feature that has not fired for a while is re-initialised towards an input the SAE reconstructs
badly: inputs are drawn with probability ∝ loss², the decoder row becomes the drawn input
(unit norm), the encoder column the same direction scaled to 0.2 × the mean norm of the alive
encoder columns, the encoder bias 0, and Adam forgets its moments for exactly those entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from sae.config import ResampleConfig
from sae.architectures import ReLUSAE


@dataclass(frozen=True)
class ResampleSchedule:
    steps: tuple[int, ...]
    dead_window: int
    n_inputs: int


def resample_schedule(cfg: ResampleConfig, total_steps: int) -> ResampleSchedule:
    """The paper's steps and window (for ~1M steps), shrunk in proportion when the run is shorter."""
    factor = min(1.0, total_steps / cfg.reference_steps) if cfg.scale_to_run else 1.0
    steps = sorted({max(1, round(s * factor)) for s in cfg.steps})
    steps = tuple(s for s in steps if s < total_steps)  # a resample at the very end could not recover
    return ResampleSchedule(steps, max(1, round(cfg.dead_window * factor)), cfg.n_inputs)


def dead_features(steps_since_fired: torch.Tensor, dead_window: int) -> torch.Tensor:
    """Indices of the features that did not fire in the last `dead_window` steps."""
    return torch.nonzero(steps_since_fired >= dead_window).flatten()


@torch.no_grad()
def sample_by_loss_squared(
    sae: ReLUSAE,
    batches: Iterable[torch.Tensor],
    n_samples: int,
    n_inputs: int,
    l1_coefficient: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `n_samples` of the first `n_inputs` inputs, without replacement, with probability ∝ loss².

    Streams the batches (Efraimidis–Spirakis keys log(u)/w, keep the top k), so the 819,200 scored
    inputs never have to sit in memory at once.
    """
    best_keys = torch.empty(0)
    best_inputs = torch.empty(0)
    seen = 0
    for batch in batches:
        x = batch[: n_inputs - seen].float().to(sae.W_dec.device)
        seen += len(x)
        x_hat, f = sae(x)
        reconstruction, l1 = sae.per_input_loss(x, x_hat, f)
        weight = (reconstruction + l1_coefficient * l1).double().pow(2).cpu()
        u = torch.rand(len(x), generator=generator, dtype=torch.float64).clamp_min(1e-300)
        keys = u.log() / weight  # weight 0 -> -inf: never chosen before a positive-weight input
        best_keys = torch.cat([best_keys.double(), keys])
        best_inputs = torch.cat([best_inputs.reshape(-1, x.shape[1]), x.cpu()])
        top = best_keys.topk(min(n_samples, len(best_keys))).indices
        best_keys, best_inputs = best_keys[top], best_inputs[top]
        if seen >= n_inputs:
            break
    if len(best_inputs) < n_samples:
        raise ValueError(f"resampling needs {n_samples} inputs but the data gave only {len(best_inputs)}")
    return best_inputs


@torch.no_grad()
def resample_features_(
    sae: ReLUSAE,
    optimizer: torch.optim.Optimizer,
    dead: torch.Tensor,
    inputs: torch.Tensor,
    encoder_scale: float = 0.2,
) -> None:
    """Re-initialise features `dead` from `inputs` (one row each) and reset their Adam moments."""
    if len(dead) == 0:
        return
    device = sae.W_dec.device
    dead = dead.to(device)
    # The direction in the SAE's (scaled) input space, where W_dec lives.
    direction = inputs.to(device).float() * sae.input_scale
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = torch.ones(sae.n_features, dtype=torch.bool, device=device)
    alive[dead] = False
    enc_norms = sae.W_enc.norm(dim=0)
    alive_norm = enc_norms[alive].mean() if alive.any() else torch.ones((), device=device)
    sae.W_dec[dead] = direction.to(sae.W_dec.dtype)
    sae.W_enc[:, dead] = (direction * encoder_scale * alive_norm).T.to(sae.W_enc.dtype)
    sae.b_enc[dead] = 0.0
    reset_adam_moments_(optimizer, {sae.W_dec: (dead, slice(None)), sae.W_enc: (slice(None), dead), sae.b_enc: (dead,)})


def reset_adam_moments_(optimizer: torch.optim.Optimizer, where: dict[torch.Tensor, tuple]) -> None:
    """Zero both Adam moments at `where[param]` (an index into that parameter); other entries keep theirs."""
    for param, index in where.items():
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
