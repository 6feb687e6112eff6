"""Quantisation, prompt format, parsing, scoring and the token-pattern baseline: no model, no network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae.core.errors import ConfigError
from sae.interp.backends import explainer_config
from sae.interp.backends.base import expected_value
from sae.interp.backends.openai_backend import OpenAIConfig
from sae.interp.backends.token_pattern import TokenPatternBackend, TokenPatternConfig
from sae.interp.config import InterpConfig
from sae.interp.pipeline import collect, summarise_method
from sae.interp.prompts import (
    EXPLANATION_PREFIX,
    MalformedCompletion,
    explain_messages,
    explain_user_message,
    parse_explanation,
    parse_integers,
    quantise,
    simulate_prompt,
    simulate_text,
)
from sae.interp.records import Harvest, Record, UnitRecords, build_records, load_records, save_records
from sae.interp.results import Simulated, SplitScore, UnitResult
from sae.interp.scoring import correlations, score_split, split_records, summarise


def ranks(x):
    """Average ranks, written out by hand (ties share the mean of their positions)."""
    x = list(x)
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson_by_hand(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=False))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_quantise_follows_bills_formula():
    assert quantise([0.0, -1.0, 0.5, 0.99, 1.0, 2.0], 1.0) == [0, 0, 5, 9, 10, 10]
    assert quantise([0.3, 0.7], 0.7) == [4, 10]
    assert quantise([1.0, 2.0], 0.0) == [0, 0]  # a unit that never fired


def test_explainer_prompt_lists_tokens_and_repeats_sparse_nonzeros():
    dense = explain_user_message(3, [([" a", " b"], [5, 10])])
    assert "<start>\n a\t5\n b\t10\n<end>" in dense
    assert "all zeros filtered out" not in dense  # 100% nonzero
    assert dense.endswith(f"Explanation of feature 3 behavior: {EXPLANATION_PREFIX}")
    tokens = [f" t{i}" for i in range(10)]
    sparse = explain_user_message(3, [(tokens, [0] * 9 + [7]), (["x\ny"], [0])])
    assert "Same activations, but with all zeros filtered out:\n<start>\n t9\t7\n<end>" in sparse
    assert "x\\ny\t0" in sparse  # a newline inside a token cannot break the line format
    messages = explain_messages([(tokens, [0] * 9 + [7])])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_simulator_prompt_marks_every_token_unknown():
    text = simulate_text("cities", [" Paris", " is"])
    assert text.endswith(f"behavior: {EXPLANATION_PREFIX} cities\nActivations:\n<start>\n Paris\tunknown\n is\tunknown\n<end>\n")
    prefix, lines = simulate_prompt("cities", [" Paris", " is"])
    assert text == prefix + "".join(line + "unknown\n" for line in lines) + "<end>\n"


def test_expected_value_renormalises_over_values():
    lp = {"0": math.log(0.5), "10": math.log(0.25), " 4": math.log(0.05), "unknown": math.log(0.2)}
    assert expected_value(lp) == pytest.approx((0 * 0.5 + 10 * 0.25 + 4 * 0.05) / 0.8)
    assert expected_value({"the": 0.0, "11": -1.0, "07": -1.0}) is None


def test_parse_integers_and_explanations():
    assert parse_integers("<start>\n a\t3\n b\t12\n c\t-1\n<end>", 3, False) == [3.0, 10.0, 0.0]
    with pytest.raises(MalformedCompletion, match="expected 3 lines, got 2"):
        parse_integers("a\t1\nb\t2", 3, False)
    with pytest.raises(MalformedCompletion, match="no integer"):
        parse_integers("a\tx\nb\t2", 2, False)
    with pytest.raises(MalformedCompletion, match="truncated"):
        parse_integers("a\t1", 1, True)
    assert parse_explanation(" the main thing this feature does is find city names. More text", False) == "city names. More text"
    assert parse_explanation(" city names.\nSecond line", False) == "city names"
    assert parse_explanation(" city names. and then a long", True) == "city names"
    with pytest.raises(MalformedCompletion, match="truncated"):
        parse_explanation(" words that go on and on", True)
    with pytest.raises(MalformedCompletion, match="no explanation"):
        parse_explanation(" ...", False)


def test_correlations_match_independent_computation():
    rng = np.random.default_rng(0)
    true = np.maximum(rng.normal(size=540), 0).round(1)  # many ties at 0, like a sparse feature
    pred = true * 0.5 + rng.normal(size=540)
    got = correlations(true, pred)
    assert got.n == 540
    assert got.pearson == pytest.approx(pearson_by_hand(true, pred), abs=1e-9)
    assert got.spearman == pytest.approx(pearson_by_hand(ranks(true), ranks(pred)), abs=1e-9)
    assert math.isnan(correlations([0, 0, 0], [1, 2, 3]).spearman)  # silent on these records: undefined
    with pytest.raises(ValueError):
        correlations([1, 2], [1])


def test_constant_prediction_scores_zero_not_undefined():
    """An explanation that predicts nothing carries no information: 0, so it counts against the method."""
    got = correlations([0, 1, 0, 2], [0, 0, 0, 0])
    assert (got.spearman, got.pearson) == (0.0, 0.0)
    assert math.isnan(correlations([1, 1, 1], [0, 0, 0]).pearson)  # unless the truth itself is constant


def _records(n_top=2, n_random=3):
    rec = lambda acts: Record(tokens=[f"t{i}" for i in range(len(acts))], acts=acts)  # noqa: E731
    return UnitRecords(
        unit=7,
        max_activation=1.0,
        density=0.1,
        explain=[],
        top=[rec([0, 1, 2]) for _ in range(n_top)],
        random=[rec([0, 0, 1]) for _ in range(n_random)],
        quantiles=[rec([1, 0, 0])],
    )


def test_splits_pool_tokens_across_records():
    r = _records()
    assert len(split_records(r, "top_and_random")) == 4  # 2 top + as many random
    assert len(split_records(r, "random_only")) == 3
    recs = split_records(r, "top_and_random")
    preds = [[0, 1, 2], [0, 1, 2], [0, 0, 1], [0, 0, 1]]
    s = score_split(recs, preds)
    assert s.n == 12 and s.pearson == pytest.approx(1.0) and s.spearman == pytest.approx(1.0)


def test_summary_mean_and_bootstrap_interval():
    vals = [0.1, 0.3, 0.2, 0.5, float("nan"), 0.4]
    s = summarise(vals, n_resamples=500)
    assert s.n_units == 5 and s.mean == pytest.approx(0.3)
    lo, hi = s.ci95
    assert 0.1 <= lo < 0.3 < hi <= 0.5
    assert math.isnan(summarise([0.2]).ci95[0])


def test_token_pattern_baseline_explains_and_predicts():
    """A unit that fires on ' Paris', and on ' York' only after ' New': the baseline finds both."""

    def rec(tokens, acts):
        return Record(tokens=tokens, acts=acts)

    explain = [
        rec([" I", " saw", " Paris", " and", " New", " York"], [0, 0, 1.0, 0, 0, 0.8]),
        rec([" a", " York", " ham", " in", " Paris"], [0, 0, 0, 0, 0.9]),
        rec([" New", " York", " is", " big"], [0, 0.7, 0, 0]),
    ]
    units = UnitRecords(unit=1, max_activation=1.0, density=0.1, explain=explain, top=[], random=[], quantiles=[])
    backend = TokenPatternBackend(TokenPatternConfig())
    e = backend.explain(units)
    assert "' Paris'" in e.text and "' New'→' York'" in e.text
    sim = backend.simulate(e, [Record(tokens=[" Paris", " York", " New", " York"], acts=[1, 0, 0, 1], prefix=[" old"])])
    p = sim.predictions[0]
    assert p[0] > 0.9 and p[3] > 0.7 and p[1] < p[3] and p[2] == 0
    assert sim.method == "token_pattern"


def test_bad_config_values_name_the_field():
    with pytest.raises(ConfigError, match="interp.units"):
        InterpConfig(units="heads")
    with pytest.raises(ConfigError, match="interp.score_tokens"):
        InterpConfig(score_tokens=100, window=64)
    with pytest.raises(ConfigError, match="explainer.kind"):
        explainer_config({"kind": "gpt5"})
    with pytest.raises(ConfigError, match="explainer.api_key_env must be the NAME"):
        OpenAIConfig(model="gpt-4o-mini", api_key_env="sk-secret-value-123")


def _result(unit, own, control):
    sim = lambda of, v: Simulated(of, "ok", "token_pattern", {"top_and_random": SplitScore(10, v, v)})  # noqa: E731
    return UnitResult(
        unit=unit,
        method="m",
        explainer="m",
        density=0.1,
        max_activation=1.0,
        status="ok",
        explanation="x",
        own=sim(unit, own),
        control=sim(unit + 1, control),
    )


def test_own_and_control_are_averaged_over_the_same_units():
    """Unit 3's records are silent (undefined for any explanation): it leaves both means, not only one."""
    results = [_result(1, 0.8, 0.0), _result(2, 0.6, 0.2), _result(3, math.nan, math.nan), _result(4, 0.4, math.nan)]
    s = summarise_method(results, InterpConfig(splits=["top_and_random"], bootstrap_resamples=100), "m")
    split = s.splits["top_and_random"]
    assert split.spearman.n_units == split.control_spearman.n_units == 2
    assert split.spearman.mean == pytest.approx(0.7) and split.control_spearman.mean == pytest.approx(0.1)
    assert s.n_units == 4 and s.n_failed == 0


def _harvest(n_contexts=12, T=10, seed=0):
    """One unit that fires somewhere in every context, so every context is a candidate for every group."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n_contexts, T, 1, generator=g) * (torch.rand(n_contexts, T, 1, generator=g) > 0.5)
    acts[:, 0, 0] = 0.01 + torch.arange(n_contexts) / 100  # distinct context maxima
    ids = torch.randint(5, 50, (n_contexts, T), generator=g)
    return Harvest(token_ids=ids, acts=acts, units=[5])


class _Tokenizer:
    def decode(self, ids):
        return f" w{ids[0]}"


@pytest.mark.parametrize("seed", range(5))
def test_scored_windows_never_come_from_the_explained_contexts(seed):
    """Few contexts, many random windows: drawn from all contexts, some would repeat what the explainer saw."""
    cfg = InterpConfig(
        n_features=1,
        n_contexts=12,
        window=10,
        n_explain=5,
        n_score_top=2,
        n_score_random=6,
        score_tokens=3,
        n_quantiles=2,
        per_quantile=2,
        seed=seed,
    )
    records, skipped = build_records(_harvest(seed=seed), cfg, _Tokenizer(), explicit=True)
    (rec,) = records
    explained = {r.context for r in rec.explain}
    scored = {r.context for r in rec.top + rec.random + rec.quantiles}
    assert len(explained) == 5 and len(rec.random) == 6
    assert not explained & scored
    assert skipped == []


def test_reused_records_keep_the_skipped_units(tmp_path):
    """The records file is the cache of the model pass: a rerun must report the same skipped units."""
    cfg = InterpConfig(n_features=1, n_contexts=12, window=10, n_explain=5, n_score_top=2, n_score_random=6, score_tokens=3)
    h = _harvest()
    h = Harvest(token_ids=h.token_ids, acts=torch.cat([torch.zeros_like(h.acts), h.acts], dim=2), units=[9, 5])
    records, skipped = build_records(h, cfg, _Tokenizer(), explicit=False)
    assert skipped == [9] and [r.unit for r in records] == [5]
    meta = {"settings": "x"}
    save_records(tmp_path / "records_features.json", meta, records, skipped)
    again = collect(None, {}, cfg, tmp_path, meta)  # no model: it must come from the file
    assert again[1] == [9] and [r.unit for r in again[0]] == [5]
    assert load_records(tmp_path / "records_features.json", {"settings": "other"}) is None
