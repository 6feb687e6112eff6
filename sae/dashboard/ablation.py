"""Feature ablation: what a unit does to the model's next-token predictions where it fires.

The contexts are run twice in one batch with the spliced activation: once as is (the SAE's
reconstruction for features, the clean activation for neurons) and once with only this unit set to
0. BOS positions keep their clean activation in both. Averaged over the positions where the unit
fires, the change in log-probability says which tokens the unit actually makes more likely in the
model (not only through the direct path that the logit weights read), and the change in next-token
loss says whether it helps predict the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae.dashboard.units import UnitSpace


def splice_run(bridge, hook: str, space: UnitSpace, batch: torch.Tensor, edits: list[tuple], bos_id: int) -> torch.Tensor:
    """Log-probs [len(batch), T, vocab]; the batch is split into len(edits) equal blocks and block i is
    run with edit i = (unit, value) applied to the spliced activation (unit None = unedited)."""
    n = len(batch) // len(edits)
    batch = batch.to(bridge.cfg.device)
    keep_clean = (batch == bos_id)[..., None]

    def hook_fn(act, hook=None):
        parts = [space.write(act[i * n : (i + 1) * n], unit, value) for i, (unit, value) in enumerate(edits)]
        return torch.where(keep_clean, act, torch.cat(parts))

    logits = bridge.run_with_hooks(batch, fwd_hooks=[(hook, hook_fn)], return_type="logits")
    return F.log_softmax(logits.float(), dim=-1).cpu()


def spliced_logprobs(bridge, hook: str, space: UnitSpace, tokens: torch.Tensor, edits: list[tuple], bos_id: int) -> torch.Tensor:
    """Log-probs [len(edits), n, T, vocab] of the same `tokens` [n, T] under each edit, in one batch."""
    logp = splice_run(bridge, hook, space, tokens.repeat(len(edits), 1), edits, bos_id)
    return logp.view(len(edits), len(tokens), tokens.shape[1], -1)


@torch.no_grad()
def ablation_effect(
    bridge, hook: str, space: UnitSpace, unit: int, tokens: torch.Tensor, fires: torch.Tensor, bos_id: int, k: int
) -> dict | None:
    """`tokens` [n, T] start with BOS; `fires` [n, T] is True where the unit is active. The prediction
    made at a firing position is compared with and without the unit. None when it never fires there."""
    mask = fires[:, :-1].bool()  # the last position has no next token to score
    if not mask.any():
        return None
    logp = spliced_logprobs(bridge, hook, space, tokens, [(None, None), (unit, 0.0)], bos_id)
    base, ablated = logp[0, :, :-1][mask], logp[1, :, :-1][mask]  # [m, vocab]
    targets = tokens[:, 1:][mask]
    effect = (base - ablated).mean(dim=0)  # > 0: the unit makes the token more likely
    ce_base = -base.gather(1, targets[:, None]).mean()
    ce_ablated = -ablated.gather(1, targets[:, None]).mean()
    up, down = effect.topk(k), (-effect).topk(k)
    return {
        "positions": int(mask.sum()),
        "loss_base": round(float(ce_base), 5),
        "loss_ablated": round(float(ce_ablated), 5),
        "delta_loss": round(float(ce_ablated - ce_base), 5),  # > 0: removing the unit hurts prediction
        "promoted": [[int(t), round(float(v), 5)] for t, v in zip(up.indices, up.values, strict=False)],
        "suppressed": [[int(t), round(float(-v), 5)] for t, v in zip(down.indices, down.values, strict=False)],
    }
