"""Feature data for the browser, computed once per SAE and stored under
`<eval>/dashboard/<weights hash>/` (Bricken et al. 2023's dashboards, offline).

One model pass over held-out text (the interpretability records pass, `sae.interp.records.harvest`)
keeps the hooked activation of every token; the SAE then encodes those activations twice, in
batches: once for per-unit statistics (density, max, the max per context), once for the histogram
and the per-token activations of each unit's top contexts and of contexts drawn from quantile bins
of its activation. Neurons (`units=neurons`) are the hook's own coordinates, read the same way.

Resumable in parts: the held-out pass, each part of `part_units` units, and each part's ablations
are separate files; a rerun with the same settings computes only the missing parts (the per-unit
statistics of the index are one encode pass over all units; a part's records, histograms and logits
are made for its own units only), and any change of settings (or of the SAE's weights, which name the
folder) starts afresh.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sae.core.files import atomic_output, atomic_write_text
from sae.dashboard.ablation import ablation_effect
from sae.dashboard.config import DashboardConfig
from sae.dashboard.steering import pinned_samples
from sae.dashboard.units import UnitSpace
from sae.interp.config import InterpConfig
from sae.interp.records import harvest

FORMAT = 2  # 2: each unit of a part keeps its top tokens, so a part is computed alone
# Settings that change the stored data (the server-only and blind settings do not).
DATA_SETTINGS = (
    "n_contexts",
    "window",
    "n_top",
    "n_quantiles",
    "per_quantile",
    "histogram_bins",
    "n_logits",
    "part_units",
    "ablation_units",
    "ablation_contexts",
    "ablation_tokens",
    "steering_units",
    "steering_multiple",
    "steering_prompts",
    "steering_tokens",
    "steering_temperature",
    "seed",
    "display_tokens",
)


def write_json(path: Path, obj) -> None:
    """Compact JSON, atomically; NaN stays NaN (the site passes it on to JavaScript, where it is a literal)."""
    atomic_write_text(path, json.dumps(obj, separators=(",", ":")))


class DashboardStore:
    """The folder of one SAE's feature data; wiped when it was made with other settings."""

    def __init__(self, root: Path, identity: dict):
        self.root = Path(root)
        meta = self.root / "meta.json"
        if meta.exists() and json.loads(meta.read_text()) != identity:
            print(f"[dashboard] settings changed: recomputing {self.root}")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            write_json(meta, identity)
        self.identity = identity

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def identity(cfg: DashboardConfig, sae_id: str, hook: str, data_cfg) -> dict:
    return {
        "format": FORMAT,
        "sae": sae_id,
        "hook": hook,
        "data": asdict(data_cfg),
        "settings": {k: getattr(cfg, k) for k in DATA_SETTINGS if hasattr(cfg, k)},
    }


# ---------------------------------------------------------------- the held-out pass


def heldout_pass(
    store: DashboardStore, bridge_fn: Callable, hook: str, layer: int, data_cfg, cfg: DashboardConfig, bos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, T] (BOS stripped) and the hooked activations [N, T, d], saved once."""
    path = store.path("heldout.safetensors")
    if path.exists():
        t = load_file(path)
        return t["token_ids"], t["acts"]
    pass_cfg = InterpConfig(
        n_contexts=cfg.n_contexts, window=cfg.window, batch_size=cfg.batch_size, n_score_random=0, score_tokens=1
    )
    h = harvest(bridge_fn(), hook, layer, lambda x: x, [], data_cfg, pass_cfg, bos_id)
    with atomic_output(path) as tmp:
        save_file({"token_ids": h.token_ids.contiguous(), "acts": h.acts.float().contiguous()}, tmp)
    return h.token_ids, h.acts


# ---------------------------------------------------------------- per-unit statistics and records


def _unit_batches(space: UnitSpace, token_ids: torch.Tensor, acts: torch.Tensor, bos_id: int, batch_tokens: int):
    """(first context, unit activations [n, T, U]) over the held-out contexts; 0 on BOS tokens."""
    N, T, _ = acts.shape
    step = max(1, batch_tokens // T)
    for c0 in range(0, N, step):
        x = acts[c0 : c0 + step]
        a = space.read(x.reshape(-1, x.shape[-1])).reshape(len(x), T, -1)
        a[token_ids[c0 : c0 + step] == bos_id] = 0
        yield c0, a


def first_pass(space: UnitSpace, token_ids, acts, bos_id: int, cfg: DashboardConfig) -> dict:
    N, T, _ = acts.shape
    ctx_max = torch.zeros(N, space.n_units)
    fires = torch.zeros(space.n_units, dtype=torch.long)
    total = torch.zeros(space.n_units, dtype=torch.float64)
    for c0, a in _unit_batches(space, token_ids, acts, bos_id, cfg.encode_batch_tokens):
        ctx_max[c0 : c0 + len(a)] = a.max(dim=1).values
        pos = a > 0
        fires += pos.sum(dim=(0, 1))
        total += torch.where(pos, a, torch.zeros(())).sum(dim=(0, 1)).double()
    n_tokens = int((token_ids != bos_id).sum())
    return {"ctx_max": ctx_max, "fires": fires, "total": total, "n_tokens": n_tokens}


def choose_contexts(ctx_max: torch.Tensor, cfg: DashboardConfig) -> list[list[tuple[int, str]]]:
    """Per unit: its top contexts, then contexts drawn from equal-count quantile bins of the other
    contexts where it fires (stratified inside each bin), all ranked by the context's max activation."""
    rng = np.random.default_rng(cfg.seed)
    N, U = ctx_max.shape
    values, order = ctx_max.sort(dim=0, descending=True)
    values, order = values.numpy(), order.numpy()
    n_pos = (values > 0).sum(axis=0)  # [U]
    k = np.minimum(cfg.n_top, n_pos)
    picks: list[list[tuple[int, str]]] = [[(int(order[r, u]), "top") for r in range(k[u])] for u in range(U)]
    if cfg.n_quantiles and cfg.per_quantile:
        rest = n_pos - k  # ranks k .. n_pos-1
        for b in range(cfg.n_quantiles):
            lo = k + (rest * b) // cfg.n_quantiles
            hi = k + (rest * (b + 1)) // cfg.n_quantiles
            width = hi - lo
            for j in range(cfg.per_quantile):
                offs = np.floor((j + rng.random(U)) * width / cfg.per_quantile).astype(int)
                ranks = lo + offs
                ok = (width >= cfg.per_quantile) | ((width > 0) & (j < width))
                ranks = np.where(width >= cfg.per_quantile, ranks, lo + j)
                for u in np.flatnonzero(ok):
                    picks[u].append((int(order[ranks[u], u]), f"q{b + 1}"))
    return picks


def window_starts(rows: np.ndarray, length: int) -> np.ndarray:
    """Per row, the start of a `length`-token window ending shortly after its maximum."""
    peak = rows.argmax(axis=1)
    return np.clip(peak - (length - 4), 0, rows.shape[1] - length)


def second_pass(
    space: UnitSpace,
    token_ids,
    acts,
    bos_id: int,
    cfg: DashboardConfig,
    maxima: torch.Tensor,
    chosen: list[list[tuple[int, str]]],
) -> tuple[torch.Tensor, np.ndarray]:
    """Activation histograms [U, bins] (positive values, bins up to each unit's max) and the rows
    [R, T] of every chosen (unit, context), in the order of `chosen`."""
    U, bins = space.n_units, cfg.histogram_bins
    hist = torch.zeros(U * bins, dtype=torch.long)
    req_u = torch.tensor([u for u, picks in enumerate(chosen) for _ in picks], dtype=torch.long)
    req_c = torch.tensor([c for picks in chosen for c, _ in picks], dtype=torch.long)
    rows = np.zeros((len(req_u), token_ids.shape[1]), dtype=np.float32)
    scale = bins / maxima.clamp_min(1e-12)
    for c0, a in _unit_batches(space, token_ids, acts, bos_id, cfg.encode_batch_tokens):
        pos = a > 0
        if pos.any():
            idx = pos.nonzero()
            b = (a[pos] * scale[idx[:, 2]]).long().clamp(0, bins - 1)
            hist += torch.bincount(idx[:, 2] * bins + b, minlength=U * bins)
        sel = ((req_c >= c0) & (req_c < c0 + len(a))).nonzero().flatten()
        if len(sel):
            rows[sel.numpy()] = a[req_c[sel] - c0, :, req_u[sel]].numpy()
    return hist.view(U, bins), rows


def build_units(
    space: UnitSpace,
    token_ids,
    acts,
    bos_id: int,
    cfg: DashboardConfig,
    store: DashboardStore,
    logits_fn: Optional[Callable[[list[int]], list[dict]]],
) -> dict:
    """The parts of one unit kind that are not stored yet, and its index; returns the index.

    Statistics need every unit (one cheap encode pass); records, histograms' rows and logits are made only
    for the units of the missing parts, and the stored parts are left as they are."""
    kind = space.kind
    n_parts = -(-space.n_units // cfg.part_units)
    index_path = store.path(kind, "index.json")
    missing = [p for p in range(n_parts) if not store.path(kind, f"part_{p:04d}.json").exists()]
    if not missing and index_path.exists():
        return json.loads(index_path.read_text())
    print(f"[dashboard] {kind}: statistics over {token_ids.numel():,} held-out tokens; {len(missing)} of {n_parts} parts to make")
    s = first_pass(space, token_ids, acts, bos_id, cfg)
    maxima = s["ctx_max"].max(dim=0).values
    chosen = choose_contexts(s["ctx_max"], cfg)
    todo = {u for p in missing for u in range(p * cfg.part_units, min((p + 1) * cfg.part_units, space.n_units))}
    chosen = [picks if u in todo else [] for u, picks in enumerate(chosen)]  # records only for the missing parts
    hist, rows = second_pass(space, token_ids, acts, bos_id, cfg, maxima, chosen)
    ids = token_ids.numpy()
    L = min(cfg.display_tokens, ids.shape[1])
    starts = window_starts(rows, L) if len(rows) else np.zeros(0, dtype=int)
    peaks = rows.argmax(axis=1) if len(rows) else np.zeros(0, dtype=int)
    row_max = np.round(rows.max(axis=1).astype(np.float64), 4) if len(rows) else np.zeros(0)
    shown = np.round(rows.astype(np.float64), 3)
    density = (s["fires"].double() / max(s["n_tokens"], 1)).tolist()
    mean_act = (s["total"] / s["fires"].clamp_min(1).double()).tolist()
    fired_ctx = (s["ctx_max"] > 0).sum(dim=0).tolist()
    hist_rows = hist.tolist()
    top_tokens: list[list[int]] = []
    r = 0
    for p in range(n_parts):
        units = list(range(p * cfg.part_units, min((p + 1) * cfg.part_units, space.n_units)))
        if p not in missing:
            top_tokens += [unit.get("top_tokens", []) for unit in load_part(store.root, kind, p)]
            continue
        print(f"[dashboard] {kind}: part {p} (units {units[0]}..{units[-1]})")
        logits = logits_fn(units) if logits_fn else [None] * len(units)
        out = []
        for u, lw in zip(units, logits, strict=False):
            records, tops = [], []
            for c, group in chosen[u]:
                st = int(starts[r])
                records.append(
                    {
                        "group": group,
                        "context": c,
                        "start": st,
                        "max": float(row_max[r]),
                        "tokens": ids[c, st : st + L].tolist(),
                        "acts": shown[r, st : st + L].tolist(),
                    }
                )
                if group == "top":
                    tops.append(int(ids[c, peaks[r]]))
                r += 1
            top_tokens.append(list(dict.fromkeys(tops))[:5])
            out.append(
                {
                    "unit": u,
                    "density": density[u],
                    "max_activation": float(maxima[u]),
                    "mean_activation": mean_act[u],
                    "fired_contexts": int(fired_ctx[u]),
                    "histogram": hist_rows[u],
                    "records": records,
                    "logits": lw,
                    "top_tokens": top_tokens[-1],
                }
            )
        write_json(store.path(kind, f"part_{p:04d}.json"), out)
    index = {
        "kind": kind,
        "n_units": space.n_units,
        "n_tokens": s["n_tokens"],
        "density": density,
        "max_activation": [round(float(v), 4) for v in maxima],
        "mean_activation": [round(v, 4) for v in mean_act],
        "fired_contexts": fired_ctx,
        "top_tokens": top_tokens,
    }
    write_json(index_path, index)
    return index


def load_part(store_root: Path, kind: str, part: int) -> list[dict]:
    return json.loads((Path(store_root) / kind / f"part_{part:04d}.json").read_text())


# ---------------------------------------------------------------- ablation and pinned sampling


def sample_firing(index: dict, n: Optional[int], seed: int) -> list[int]:
    """Units that fired on held-out text: all (n None) or a seeded random sample of n, sorted."""
    firing = [u for u, d in enumerate(index["density"]) if d > 0]
    if n is None or n >= len(firing):
        return firing
    return sorted(np.random.default_rng(seed).choice(firing, size=n, replace=False).tolist())


def build_ablations(
    space: UnitSpace, bridge, hook: str, token_ids, acts, bos_id: int, cfg: DashboardConfig, store: DashboardStore, index: dict
) -> None:
    """Ablation effects of the chosen units, one file per part (resumable)."""
    units = sample_firing(index, cfg.ablation_units, cfg.seed)
    by_part: dict[int, list[int]] = {}
    for u in units:
        by_part.setdefault(u // cfg.part_units, []).append(u)
    for p, members in sorted(by_part.items()):
        path = store.path(space.kind, f"ablation_{p:04d}.json")
        if path.exists():
            continue
        print(f"[dashboard] {space.kind}: ablating {len(members)} units of part {p} ...")
        part = {r["unit"]: r for r in load_part(store.root, space.kind, p)}
        out = {}
        for u in members:
            ctxs = [r["context"] for r in part[u]["records"] if r["group"] == "top"][: cfg.ablation_contexts]
            body = token_ids[ctxs]
            tokens = torch.cat([torch.full((len(ctxs), 1), bos_id), body], dim=1)
            unit_acts = space.read(acts[ctxs].reshape(-1, acts.shape[-1])).reshape(len(ctxs), -1, space.n_units)[..., u]
            fires = torch.cat([torch.zeros(len(ctxs), 1, dtype=torch.bool), (unit_acts > 0) & (body != bos_id)], dim=1)
            out[str(u)] = ablation_effect(bridge, hook, space, u, tokens, fires, bos_id, cfg.ablation_tokens)
        write_json(path, out)


def build_steering(
    space: UnitSpace, bridge, hook: str, bos_id: int, cfg: DashboardConfig, store: DashboardStore, index: dict
) -> None:
    path = store.path(space.kind, "steering.json")
    done = json.loads(path.read_text()) if path.exists() else {}
    for u in sample_firing(index, cfg.steering_units, cfg.seed + 1):
        if str(u) in done:
            continue
        value = cfg.steering_multiple * index["max_activation"][u]
        samples = pinned_samples(
            bridge,
            hook,
            space,
            u,
            value,
            list(cfg.steering_prompts),
            cfg.steering_tokens,
            cfg.steering_temperature,
            cfg.seed,
            bos_id,
        )
        done[str(u)] = {"multiple": cfg.steering_multiple, "value": value, "samples": samples}
        write_json(path, done)  # after every unit: an interrupted run keeps what it finished


def load_extras(store_root: Path, kind: str, part: int) -> tuple[dict, dict]:
    """(ablation effects, pinned samples) of a part's units, keyed by unit as a string."""
    root = Path(store_root) / kind
    abl = root / f"ablation_{part:04d}.json"
    steer = root / "steering.json"
    return (json.loads(abl.read_text()) if abl.exists() else {}), (json.loads(steer.read_text()) if steer.exists() else {})
