"""Dead-neuron resampling ("Towards Monosemanticity", 2023), in plain torch.

A feature that has not fired for a while is re-initialised towards an input the SAE reconstructs
badly: inputs are drawn with probability ∝ loss², the decoder row becomes the drawn input
(unit norm), the encoder column the same direction scaled to 0.2 × the mean norm of the alive
encoder columns, the encoder bias 0, and Adam forgets its moments for exactly those entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sae.architectures import ReLUSAE
from sae.architectures.sparse import decode
from sae.training.config import ResampleConfig


@dataclass(frozen=True)
class ResampleSchedule:
    steps: tuple[int, ...]
    dead_window: int  # steps
    window_tokens: int  # dead_window × batch size
    n_inputs: int
    note: str  # one line for start-up when the run is too short for the scaled schedule; "" otherwise


def min_dead_window_tokens(healthy_density: float, false_dead_probability: float) -> int:
    """Fewest tokens T with P(a feature of this density never fires in T tokens) = (1-p)^T <= the bound."""
    return math.ceil(math.log(false_dead_probability) / math.log1p(-healthy_density))


def resample_schedule(cfg: ResampleConfig, total_steps: int, batch_size: int) -> ResampleSchedule:
    """The paper's token schedule, scaled to the run, with a dead window no shorter than the honest minimum.

    Each event needs a full window of observation before it: the first since the start, each later one
    since the previous event (whose resampled features restart their count). Events are moved later to
    get one, and dropped when that reaches the end of the run.
    """
    total_tokens = total_steps * batch_size
    factor = min(1.0, total_tokens / cfg.reference_tokens) if cfg.scale_to_run else 1.0
    scaled_window = max(1, round(cfg.dead_window_tokens * factor))
    floor = min_dead_window_tokens(cfg.healthy_density, cfg.false_dead_probability)
    dead_window = math.ceil(max(scaled_window, floor) / batch_size)
    wanted = sorted({max(1, round(t * factor / batch_size)) for t in cfg.at_tokens})
    steps: list[int] = []
    for step in wanted:
        step = max(step, (steps[-1] if steps else 0) + dead_window)
        if step < total_steps:  # a resample at the very end could not recover
            steps.append(step)
    note = ""
    if scaled_window < floor or tuple(steps) != tuple(s for s in wanted if s < total_steps):
        p_dead = (1 - cfg.healthy_density) ** scaled_window
        note = (
            f"resampling: {total_tokens:,} training tokens are too few for the paper's schedule scaled to this run "
            f"(a {scaled_window:,}-token dead window would call a feature of density {cfg.healthy_density:g} dead with "
            f"probability {p_dead:.2f}); using a {dead_window * batch_size:,}-token window and "
            f"{len(steps)} of {len(wanted)} events, at steps {list(steps)}."
        )
    return ResampleSchedule(tuple(steps), dead_window, dead_window * batch_size, cfg.n_inputs, note)


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
        f = sae.encode(x)
        x_hat = decode(sae, f, sae.sparse_kernel)
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
