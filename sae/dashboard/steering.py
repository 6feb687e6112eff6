"""Pinned-unit sampling (Bricken et al. 2023): continue prompts with a unit clamped at a fixed value
at every position, beside unclamped continuations of the same prompts.

Both continuations run in one batch through the same splice (the SAE's reconstruction for
features), differ only in the clamp, and draw each next token by inverse-CDF sampling from the same
uniform number, so with the same seed any difference comes from the clamp alone.
"""

from __future__ import annotations

import torch

from sae.dashboard.ablation import splice_run, spliced_logprobs
from sae.dashboard.units import UnitSpace


def prompt_ids(bridge, prompt: str, bos_id: int) -> torch.Tensor:
    ids = bridge.tokenizer.encode(prompt, add_special_tokens=False)
    return torch.tensor([[bos_id, *ids]])


@torch.no_grad()
def next_token_logprobs(
    bridge, hook: str, space: UnitSpace, unit: int, value: float, tokens: torch.Tensor, bos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs at the last position [n, vocab], unclamped and with `unit` pinned at `value`."""
    logp = spliced_logprobs(bridge, hook, space, tokens, [(None, None), (unit, float(value))], bos_id)
    return logp[0, :, -1], logp[1, :, -1]


@torch.no_grad()
def pinned_samples(
    bridge,
    hook: str,
    space: UnitSpace,
    unit: int,
    value: float,
    prompts: list[str],
    n_tokens: int,
    temperature: float,
    seed: int,
    bos_id: int,
    k: int = 8,
) -> list[dict]:
    out = []
    for i, prompt in enumerate(prompts):
        start = prompt_ids(bridge, prompt, bos_id)
        seqs = start.repeat(2, 1)
        gen = torch.Generator().manual_seed(seed + i)
        first_shift = None
        for _ in range(n_tokens):
            # row 0 unclamped, row 1 pinned: one batch, each row its own continuation
            logp = splice_run(bridge, hook, space, seqs, [(None, None), (unit, float(value))], bos_id)[:, -1]
            if first_shift is None:
                shift = logp[1].exp() - logp[0].exp()
                top = shift.topk(k)
                first_shift = [[int(t), round(float(v), 5)] for t, v in zip(top.indices, top.values, strict=False)]
            if temperature == 0:
                nxt = logp.argmax(dim=-1)
            else:
                cdf = torch.softmax(logp / temperature, dim=-1).cumsum(dim=-1)
                u = torch.rand(1, generator=gen).item()
                nxt = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous()).squeeze(1)
                nxt = torch.minimum(nxt, torch.tensor(cdf.shape[1] - 1))
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        n0 = start.shape[1]
        out.append(
            {
                "prompt": prompt,
                "unclamped": bridge.tokenizer.decode(seqs[0, n0:].tolist()),
                "pinned": bridge.tokenizer.decode(seqs[1, n0:].tolist()),
                "first_step_raised": first_shift,
            }
        )
    return out
