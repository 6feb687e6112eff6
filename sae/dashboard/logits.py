"""Logit weights: the tokens a unit's output direction most promotes and suppresses, read directly
through the unembedding (Bricken et al. 2023).

The final norm is treated as a linear map: its elementwise scale (γ of the final LayerNorm or
RMSNorm) is applied, its division by the residual norm is ignored. That division is one positive
number per position, so it changes the size of a logit but not which tokens rank highest; the
path through later layers is ignored too (this is the direct effect only).
"""

from __future__ import annotations

import re
from typing import Optional

import torch

NORM_NOTE = (
    "Direct path only: decoder direction × final norm scale γ × unembedding W_U. The final norm's "
    "division by the residual norm is ignored (a positive factor per position: it rescales logits "
    "without reordering them); later layers are ignored."
)

# Hook sites (inside a block) that are the residual stream or are added straight into it. A direction
# anywhere else (the MLP's neurons, attention internals, a norm's output) has no direct path to the
# unembedding: it reaches the logits only through the computation after it.
RESIDUAL_SITES = frozenset(
    {
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_in",
        "hook_out",
        "hook_mlp_out",
        "hook_attn_out",
        "mlp.hook_out",
        "attn.hook_out",
        "mlp.out.hook_out",
        "attn.o.hook_out",
        "ln1.hook_in",
        "ln2.hook_in",
    }
)


def direct_path(hook: str, width: int, d_model: int) -> bool:
    """Whether a unit's direction at `hook` (a full name such as blocks.3.hook_mlp_out) has a direct
    path to the logits: the hook is the residual stream or is added into it, and is d_model wide."""
    return width == d_model and re.sub(r"^blocks\.\d+\.", "", hook) in RESIDUAL_SITES


def final_norm_scale(bridge) -> Optional[torch.Tensor]:
    """γ of the model's final norm, or None when it has no learned scale."""
    ln = getattr(bridge, "ln_final", None)
    if ln is None:
        return None
    for name, p in ln.named_parameters():
        if name.split(".")[-1] == "weight":
            return p.detach().float().cpu()
    return None


def unembedding(bridge) -> torch.Tensor:
    """W_U as [d_model, vocab], float32 on the CPU."""
    return bridge.W_U.detach().float().cpu()


@torch.no_grad()
def logit_weights(
    directions: torch.Tensor, w_u: torch.Tensor, gamma: Optional[torch.Tensor], k: int, chunk: int = 1024
) -> list[dict]:
    """Per direction: the k most promoted and k most suppressed token ids with their logit weights."""
    out = []
    for i in range(0, len(directions), chunk):
        d = directions[i : i + chunk].float()
        if gamma is not None:
            d = d * gamma
        logits = d @ w_u
        top = logits.topk(k, dim=1)
        bottom = (-logits).topk(k, dim=1)
        ti, tv = top.indices.tolist(), top.values.round(decimals=4).tolist()
        bi, bv = bottom.indices.tolist(), (-bottom.values).round(decimals=4).tolist()
        for j in range(len(d)):
            out.append(
                {
                    "promoted": [list(x) for x in zip(ti[j], tv[j], strict=False)],
                    "suppressed": [list(x) for x in zip(bi[j], bv[j], strict=False)],
                }
            )
    return out
