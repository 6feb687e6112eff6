"""Activation records: excerpts of held-out text with one unit's activation on every token.

One pass of the language model over held-out contexts computes the activations of many units at
once (SAE features, or the raw neurons of a hook); per unit it then picks the top-activating
windows (to explain and to score), random windows (to score), and windows drawn from quantiles of
the unit's activation. Records are saved to JSON so a resumed run never repeats the pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sae.core.errors import ConfigError
from sae.core.files import atomic_write_json
from sae.formats.run_config import run_configs
from sae.interp.config import InterpConfig
from sae.lm.bridge import bos_token_id, load_language_model
from sae.text.contexts import batched, iter_contexts, iter_texts


@dataclass
class Record:
    tokens: list[str]
    acts: list[float]
    prefix: list[str] = field(default_factory=list)  # preceding tokens: context only, never scored
    context: int = -1  # which held-out context it came from
    start: int = 0  # offset of tokens[0] in that context


@dataclass
class UnitRecords:
    unit: int
    max_activation: float
    density: float  # fraction of held-out tokens where the unit is > 0
    explain: list[Record]
    top: list[Record]
    random: list[Record]
    quantiles: list[Record]

    @staticmethod
    def from_dict(d: dict) -> UnitRecords:
        groups = {k: [Record(**r) for r in d[k]] for k in ("explain", "top", "random", "quantiles")}
        return UnitRecords(unit=d["unit"], max_activation=d["max_activation"], density=d["density"], **groups)


@dataclass
class Harvest:
    """Token ids [N, T] and unit activations [N, T, U] over N held-out windows of T tokens."""

    token_ids: torch.Tensor
    acts: torch.Tensor
    units: list[int]


def unit_encoder(sae, units: str, candidates: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map hook activations [..., d] to the candidate units' activations [..., U]."""
    idx = torch.tensor(candidates, dtype=torch.long)
    if units == "neurons":
        return lambda x: x[..., idx]
    # The architecture's own encode (a TopK selection needs every latent's pre-activation).
    return lambda x: sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype))[..., idx.to(sae.W_enc.device)].to(x.device)


@torch.no_grad()
def harvest(
    bridge,
    hook: str,
    layer: int,
    encode,
    candidates: list[int],
    data_cfg,
    cfg: InterpConfig,
    bos_id: int,
    device: torch.device | str = "cpu",
) -> Harvest:
    """One pass over held-out text; activations on BOS (document separators) are set to 0.

    `encode` runs on `device` (where the SAE is); the activations are kept on the CPU."""
    contexts = iter_contexts(iter_texts(data_cfg, "heldout"), bridge.tokenizer, cfg.window + 1, bos_id)
    ids, acts, n = [], [], 0
    with torch.inference_mode():
        for tokens in batched(contexts, cfg.batch_size):
            tokens = tokens[: cfg.n_contexts - n].to(bridge.cfg.device)
            _, cache = bridge.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1)
            a = encode(cache[hook].float().to(device)).cpu()[:, 1:]
            body = tokens[:, 1:].cpu()
            a[body == bos_id] = 0
            ids.append(body)
            acts.append(a)
            n += len(tokens)
            if n >= cfg.n_contexts:
                break
    if not ids:
        raise RuntimeError("no held-out text: the data source gave no contexts for the held-out split.")
    return Harvest(torch.cat(ids), torch.cat(acts), list(candidates))


def unit_hook(sae_cfg: dict, interp: InterpConfig) -> str:
    """The hook whose activations the units read: the SAE's own, or `interp.neuron_hook` of the same block."""
    if interp.units == "neurons" and interp.neuron_hook:
        return f"blocks.{sae_cfg['layer']}.{interp.neuron_hook}"
    return sae_cfg["hook_name"]


def harvest_units(sae, sae_cfg: dict, interp: InterpConfig, bridge=None) -> tuple[Harvest, object]:
    """The records pass: the chosen units' activations on every token of `interp.n_contexts` held-out windows.

    One model pass for all units; returns the harvest and the language model (for its tokenizer).
    Everything that shows units on text (scoring, dashboards) builds on this.
    """
    if not (sae_cfg.get("train_config") or {}).get("data"):
        raise ConfigError("cfg.json has no train_config.data: cannot tell which text the SAE was trained on.")
    run = run_configs(sae_cfg)
    bridge = bridge or load_language_model(run.model)
    hook = unit_hook(sae_cfg, interp)
    if hook not in bridge.hook_dict:
        raise ConfigError(f"interp.neuron_hook={interp.neuron_hook!r}: {hook} is not a hook of {run.model.name}.")
    if interp.units == "neurons":
        probe = torch.tensor([[bos_token_id(bridge)]], device=bridge.cfg.device)
        _, cache = bridge.run_with_cache(probe, names_filter=hook, stop_at_layer=sae_cfg["layer"] + 1)
        n_units = cache[hook].shape[-1]
    else:
        n_units = sae.n_features
    candidates = choose_candidates(n_units, interp)
    encode = unit_encoder(sae, interp.units, candidates)
    device = sae.W_dec.device if interp.units == "features" else "cpu"
    h = harvest(bridge, hook, sae_cfg["layer"], encode, candidates, run.data, interp, bos_token_id(bridge), device)
    return h, bridge


class TokenStrings:
    """Token ids to display strings (" the", "ing"), decoded once per id."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in self.cache:
                self.cache[i] = self.tokenizer.decode([i])
            out.append(self.cache[i])
        return out


def make_record(h: Harvest, u: int, ctx: int, start: int, length: int, strings: TokenStrings, prefix_len: int = 8) -> Record:
    ids = h.token_ids[ctx]
    return Record(
        tokens=strings(ids[start : start + length]),
        acts=[round(float(a), 5) for a in h.acts[ctx, start : start + length, u]],
        prefix=strings(ids[max(0, start - prefix_len) : start]),
        context=int(ctx),
        start=int(start),
    )


def window_around_max(acts_row: torch.Tensor, length: int) -> int:
    """Start of a `length`-token window that ends shortly after the maximum, so its context precedes it."""
    peak = int(acts_row.argmax())
    return int(min(max(0, peak - (length - 3)), len(acts_row) - length))


def unit_records(h: Harvest, u: int, cfg: InterpConfig, strings: TokenStrings, rng: np.random.Generator) -> UnitRecords:
    a = h.acts[:, :, u]
    ctx_max = a.max(dim=1).values
    active = torch.nonzero(ctx_max > 0).flatten()
    order = active[torch.argsort(ctx_max[active], descending=True)]
    pool = order[: cfg.n_explain + cfg.n_score_top].numpy().copy()
    rng.shuffle(pool)  # explain on a spread of the top windows, score on the others
    explain_ctx, top_ctx = pool[: cfg.n_explain], pool[cfg.n_explain :]
    T, L = h.token_ids.shape[1], cfg.score_tokens
    # Random windows never come from the contexts the explainer saw: scoring them would test recall.
    others = np.setdiff1d(np.arange(h.token_ids.shape[0]), explain_ctx)
    if not len(others):
        raise ValueError(
            f"interp.n_contexts={h.token_ids.shape[0]} held-out windows leave none to score beside the "
            f"{len(explain_ctx)} explained ones: raise interp.n_contexts."
        )
    random_contexts = rng.choice(others, size=cfg.n_score_random, replace=len(others) < cfg.n_score_random)
    random_starts = rng.integers(0, T - L + 1, size=cfg.n_score_random)

    quantile_ctx = []
    rest = order[len(pool) :].numpy()
    if len(rest) and cfg.n_quantiles:
        values = ctx_max[rest].numpy()
        edges = np.quantile(values, np.linspace(0, 1, cfg.n_quantiles + 1))
        for lo, hi in zip(edges[:-1], edges[1:], strict=False):
            members = rest[(values >= lo) & (values <= hi)]
            if len(members):
                quantile_ctx.extend(rng.choice(members, size=min(cfg.per_quantile, len(members)), replace=False).tolist())

    return UnitRecords(
        unit=h.units[u],
        max_activation=float(ctx_max.max()) if len(ctx_max) else 0.0,
        density=float((a > 0).float().mean()),
        explain=[make_record(h, u, c, 0, T, strings) for c in explain_ctx],
        top=[make_record(h, u, c, window_around_max(a[c], L), L, strings) for c in top_ctx],
        random=[make_record(h, u, int(c), int(s), L, strings) for c, s in zip(random_contexts, random_starts, strict=False)],
        quantiles=[make_record(h, u, c, window_around_max(a[c], L), L, strings) for c in quantile_ctx],
    )


def choose_candidates(n_units: int, cfg: InterpConfig) -> list[int]:
    """Explicit units, or a seeded random sample with spares for units that never fire on held-out text."""
    if cfg.features is not None:
        bad = [f for f in cfg.features if int(f) >= n_units]
        if bad:
            raise ValueError(f"interp.features={list(cfg.features)}: {bad} out of range, there are {n_units} {cfg.units}.")
        return [int(f) for f in cfg.features]
    perm = np.random.default_rng(cfg.seed).permutation(n_units)
    return perm[: min(n_units, 4 * cfg.n_features + 16)].tolist()


def build_records(h: Harvest, cfg: InterpConfig, tokenizer, explicit: bool) -> tuple[list[UnitRecords], list[int]]:
    """Records for the chosen units; with a sample, units that never fired are skipped (returned second)."""
    rng = np.random.default_rng(cfg.seed + 1)
    strings = TokenStrings(tokenizer)
    out, skipped = [], []
    for u in range(len(h.units)):
        fired = int((h.acts[:, :, u].max(dim=1).values > 0).sum())
        if not explicit and fired < cfg.n_explain:
            skipped.append(h.units[u])
            continue
        out.append(unit_records(h, u, cfg, strings, rng))
        if not explicit and len(out) == cfg.n_features:
            break
    return out, skipped


def save_records(path: Path, meta: dict, records: list[UnitRecords], skipped: list[int] | None = None) -> None:
    atomic_write_json(path, {"meta": meta, "units": [asdict(r) for r in records], "skipped": list(skipped or [])}, indent=None)


def load_records(path: Path, meta: dict) -> tuple[list[UnitRecords], list[int]] | None:
    """The saved records and the units skipped for never firing, when made with the same settings; else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if data.get("meta") != meta or "skipped" not in data:
        return None
    return [UnitRecords.from_dict(d) for d in data["units"]], [int(u) for u in data["skipped"]]
