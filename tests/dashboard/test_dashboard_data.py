"""Per-unit statistics and records on activations with known answers, and resuming in parts (no
language model: neurons read straight from a hand-made activation tensor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae.architectures import build_sae
from sae.core.errors import ConfigError
from sae.dashboard.config import DashboardConfig
from sae.dashboard.data import DashboardStore, build_units, choose_contexts
from sae.dashboard.units import UnitSpace

BOS = 0


def known_acts():
    """12 contexts x 8 tokens x 3 neurons. Neuron 0 fires once per context c (c = 0..9) with value
    c+1 at position c % 8; neuron 1 never fires; neuron 2 fires on every token with value 0.5,
    except on a BOS token inside context 11, where it must read as 0."""
    N, T = 12, 8
    ids = torch.arange(N * T).reshape(N, T) + 10
    ids[11, 3] = BOS
    acts = torch.full((N, T, 3), -1.0)
    for c in range(10):
        acts[c, c % T, 0] = c + 1.0
    acts[..., 2] = 0.5
    return ids, acts


def cfg(**over):
    return DashboardConfig(
        **{"n_top": 3, "n_quantiles": 2, "per_quantile": 1, "histogram_bins": 5, "display_tokens": 4, "part_units": 2, **over}
    )


def test_statistics_and_records_have_the_known_values(tmp_path):
    ids, acts = known_acts()
    c = cfg()
    store = DashboardStore(tmp_path, {"test": 1})
    index = build_units(UnitSpace("neurons", width=3), ids, acts, BOS, c, store, None)
    n_tokens = 12 * 8 - 1
    assert index["n_tokens"] == n_tokens
    assert index["density"] == pytest.approx([10 / n_tokens, 0.0, (n_tokens) / n_tokens])
    assert index["max_activation"] == [10.0, 0.0, 0.5]
    assert index["fired_contexts"] == [10, 0, 12]
    parts = [json.loads((tmp_path / "neurons" / f"part_{p:04d}.json").read_text()) for p in (0, 1)]
    n0, n1, n2 = parts[0][0], parts[0][1], parts[1][0]
    # top contexts by max activation: 9, 8, 7; quantile bins over the other 7 firing contexts
    top = [r for r in n0["records"] if r["group"] == "top"]
    assert [r["context"] for r in top] == [9, 8, 7] and [r["max"] for r in top] == [10.0, 9.0, 8.0]
    quantile = {r["group"]: r["context"] for r in n0["records"] if r["group"] != "top"}
    assert set(quantile) == {"q1", "q2"} and quantile["q1"] in (6, 5, 4) and quantile["q2"] in (3, 2, 1, 0)
    # a 4-token window ending just after the maximum, with its tokens and values
    r7 = top[2]  # context 7: peak at position 7 -> window 4..7
    assert (
        r7["start"] == 4 and r7["tokens"] == ids[7, 4:8].tolist() and r7["acts"] == [-1.0, -1.0, -1.0, 8.0]
    )  # neurons keep their sign
    assert index["top_tokens"][0] == [int(ids[9, 1]), int(ids[8, 0]), int(ids[7, 7])]
    # histogram: 10 values 1..10 in 5 bins up to the max 10 -> [1,2],[3,4],... (10 falls in the last bin)
    assert n0["histogram"] == [1, 2, 2, 2, 3]
    assert n1["records"] == [] and n1["histogram"] == [0] * 5
    assert sum(n2["histogram"]) == n_tokens
    bos_rec = [r for r in n2["records"] if r["context"] == 11]
    for r in bos_rec:
        for t, a in zip(r["tokens"], r["acts"], strict=False):
            assert (a == 0.0) == (t == BOS)


def test_quantile_samples_cover_the_bins_of_a_wide_unit():
    ctx_max = torch.tensor(np.linspace(0, 1, 101)[::-1].copy(), dtype=torch.float32)[:, None]  # 100 firing + one 0
    picks = choose_contexts(ctx_max, cfg(n_top=10, n_quantiles=3, per_quantile=2))[0]
    assert [c for c, g in picks if g == "top"] == list(range(10))
    for b, (lo, hi) in enumerate(((10, 40), (40, 70), (70, 100))):
        got = [c for c, g in picks if g == f"q{b + 1}"]
        assert len(got) == 2 and len(set(got)) == 2 and all(lo <= c < hi for c in got)
    assert 100 not in [c for c, _ in picks]  # never a context where it did not fire


class CountingLogits:
    """The per-unit logits hook of build_units, recording which units each call computed."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, units: list[int]) -> list[dict]:
        self.calls.append(list(units))
        return [{"unit": u} for u in units]


def test_features_read_through_encode_and_resume_in_parts(tmp_path):
    torch.manual_seed(0)
    sae = build_sae("relu", 6, 5)
    ids = torch.randint(1, 50, (10, 8))
    acts = torch.randn(10, 8, 6)
    c = cfg()
    store = DashboardStore(tmp_path, {"sae": "x", "settings": 1})
    logits = CountingLogits()
    index = build_units(UnitSpace("features", sae), ids, acts, BOS, c, store, logits)
    assert logits.calls == [[0, 1], [2, 3], [4]]
    f = sae.encode(acts.reshape(-1, 6))
    assert index["max_activation"] == pytest.approx(f.max(dim=0).values.tolist(), abs=1e-4)
    assert index["density"] == pytest.approx((f > 0).float().mean(dim=0).tolist())
    parts = sorted((tmp_path / "features").glob("part_*.json"))
    assert len(parts) == 3
    contents = [p.read_bytes() for p in parts]
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert build_units(UnitSpace("features", sae), ids, acts, BOS, c, store, logits) == index
    assert [p.stat().st_mtime_ns for p in parts] == stamps and len(logits.calls) == 3  # nothing recomputed
    parts[1].unlink()
    logits.calls.clear()
    assert build_units(UnitSpace("features", sae), ids, acts, BOS, c, store, logits) == index
    assert logits.calls == [[2, 3]]  # only the missing part's units
    assert [parts[0].stat().st_mtime_ns, parts[2].stat().st_mtime_ns] == [stamps[0], stamps[2]]  # the others untouched
    assert [p.read_bytes() for p in parts] == contents  # and the part made again equals the first
    # other settings: the folder starts afresh
    DashboardStore(tmp_path, {"sae": "x", "settings": 2})
    assert not list(tmp_path.glob("features/part_*.json"))


def test_bad_settings_fail_naming_the_field():
    with pytest.raises(ConfigError, match="dashboard.units"):
        DashboardConfig(units=["heads"])
    with pytest.raises(ConfigError, match="dashboard.steering_multiple"):
        DashboardConfig(steering_multiple=0)
    with pytest.raises(ConfigError, match="dashboard.port"):
        DashboardConfig(port=70000)
