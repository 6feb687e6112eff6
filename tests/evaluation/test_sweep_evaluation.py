"""`evaluate.py sweep_dir=...` on a tiny real sweep (two runs of `train.py --multirun`), the sweep report
built on its results, and `eval_corpora` (held-out metrics per corpus) on one of its SAEs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from support.runs import TINY, read_json, run_script

from sae.core.errors import ConfigError
from sae.evaluation.config import EvaluateConfig
from sae.interp.config import InterpConfig
from sae.sweeps.evaluation import evaluate_sweep, sample_units
from sae.sweeps.report import build_report

INTERP = [
    "interp.n_features=3",
    "interp.n_contexts=64",
    "interp.window=24",
    "interp.n_explain=3",
    "interp.n_score_top=3",
    "interp.n_score_random=4",
    "interp.score_tokens=6",
    "interp.bootstrap_resamples=200",
]
METRICS = ["metrics.ce_tokens=128", "metrics.heldout_tokens=2000", "metrics.density_tokens=4000"]
OUTPUTS = ("metrics.json", "interp_summary.json", "interp/results.jsonl", "interp/records_features.json")


def test_units_are_drawn_among_those_that_fire_often_enough():
    fired = torch.tensor([0, 5, 2, 3, 9, 1, 3])  # windows each feature fired on
    interp = InterpConfig(n_features=2, n_explain=3, seed=7)
    units, eligible = sample_units(fired, interp)
    assert eligible == 4 and units == np.random.default_rng(7).permutation([1, 3, 4, 6])[:2].tolist()
    assert sample_units(fired, interp) == (units, eligible)  # the same for every SAE with these counts
    assert sorted(sample_units(fired, InterpConfig(n_features=8, n_explain=3))[0]) == [1, 3, 4, 6]  # fewer fire: all


def test_sweep_settings_fail_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        EvaluateConfig(sweep_dir=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="stage='dashboard' with sweep_dir"):
        EvaluateConfig(sweep_dir=str(tmp_path), stage="dashboard")
    with pytest.raises(ConfigError, match="give one of them"):
        EvaluateConfig(sweep_dir=str(tmp_path), sae_path="x")
    with pytest.raises(ConfigError, match="sae_path is missing"):
        EvaluateConfig()
    with pytest.raises(ConfigError, match="no finished runs"):
        evaluate_sweep(EvaluateConfig(sweep_dir=str(tmp_path)), tmp_path, tmp_path / "eval", ("metrics",), None, None, None)
    with pytest.raises(ConfigError, match="units=features"):
        cfg = EvaluateConfig(sweep_dir=str(tmp_path), stage="interp")
        evaluate_sweep(cfg, tmp_path, tmp_path / "eval", ("interp",), InterpConfig(units="neurons"), None, None)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, activation_cache_dir) -> Path:
    sweep = tmp_path_factory.mktemp("sweep-eval") / "multirun"
    tiny = [a for a in TINY if not a.startswith("sae.tokens=")] + ["sae.tokens=25600"]  # 100 steps
    args = ["--multirun", *tiny, "logger=csv", "sae.dtype=float32", "trainer.eval_tokens=128", "sae.l1_coefficient=1e-3,1e-2"]
    run_script("train.py", [*args, f"hydra.sweep.dir={sweep}"], activation_cache_dir, timeout=1800)
    return sweep


@pytest.fixture(scope="module")
def evaluated(tiny_sweep):
    proc = run_script("evaluate.py", [f"sweep_dir={tiny_sweep}", "stage=all", *METRICS, *INTERP], timeout=1800)
    runs = sorted(p.parent for p in tiny_sweep.glob("*/summary.json"))
    assert len(runs) == 2, sorted(p.name for p in tiny_sweep.iterdir())
    return proc, runs


def records(run: Path) -> dict:
    return read_json(run / "eval" / "interp" / "records_features.json")


@pytest.mark.slow
def test_sweep_evaluation_one_protocol_shared_work(evaluated, tiny_sweep):
    proc, runs = evaluated
    out = proc.stdout
    # one language model and one held-out pass for both SAEs; the second reuses the zero-ablated losses
    assert out.count("[sweep] loading") == 1 and out.count("[sweep] held-out windows:") == 1, out[-3000:]
    assert "[spliced_loss] zero-ablated run: 1 of 1 batches reused" in out
    # the records' 4 batches of windows are replayed to both SAEs; the metrics' held-out pass to the second too
    replayed = [int(n) for n in re.findall(r"(\d+) held-out model passes replayed", out)]
    assert len(replayed) == 2 and replayed[1] > replayed[0] >= 4, replayed
    job = read_json(tiny_sweep / "eval" / "sweep_evaluation.json")
    assert job["protocol"]["interp"]["n_features"] == 3 and job["protocol"]["explainer"].startswith("token_pattern")
    contexts = []
    for run in runs:
        entry = job["runs"][run.name]
        assert entry["status"] == "evaluated" and len(entry["features"]) == 3 and entry["eligible_features"] >= 3
        metrics = read_json(run / "eval" / "metrics.json")
        assert metrics["ce_zero_ablated"] > metrics["ce_clean"] and metrics["l0"] > 0
        summary = read_json(run / "eval" / "interp_summary.json")["features"]
        assert summary["unit_ids"] == entry["features"] and summary["skipped_never_fired"] == []
        assert summary["spearman"]["n_units"] >= 2 and summary["primary_method"] == "token_pattern"
        assert read_json(run / "eval" / "sweep_evaluation.json")["result"]["features"] == entry["features"]
        units = records(run)["units"]
        # drawn among features that fire on >= n_explain windows: each has its 3 windows to explain
        assert [u["unit"] for u in units] == entry["features"] and all(len(u["explain"]) == 3 for u in units)
        seen = {}
        for u in units:
            for group in ("explain", "top", "random"):
                for r in u[group]:
                    seen.setdefault(r["context"], {})[r["start"]] = r["tokens"]
        contexts.append(seen)
    # the same held-out windows: where both SAEs drew records from one context, the tokens agree
    common = set(contexts[0]) & set(contexts[1])
    assert common
    for c in common:
        for start in set(contexts[0][c]) & set(contexts[1][c]):
            a, b = contexts[0][c][start], contexts[1][c][start]  # a whole window, or a scored excerpt of it
            n = min(len(a), len(b))
            assert a[:n] == b[:n] and n >= 6
    assert records(runs[0])["units"] != records(runs[1])["units"]  # two SAEs, their own features

    report = build_report(tiny_sweep)
    rows = {r.path: r for r in report.rows}
    assert set(rows) == {r.name for r in runs}  # eval/ directories are not runs
    for run in runs:
        row, summary = rows[run.name], read_json(run / "eval" / "interp_summary.json")["features"]
        assert row.interp == pytest.approx(summary["spearman"]["mean"])
        assert row.interp_control == pytest.approx(summary["control_spearman"]["mean"])
        assert row.l0_source == "eval/metrics.json:l0" and row.l0 == read_json(run / "eval" / "metrics.json")["l0"]
        assert row.kl_score_source == "eval/metrics.json:kl_score"
    md = report.markdown.read_text()
    assert "reconstruction score and interpretability: too few settings (2; needs 3)" in md
    assert (tiny_sweep / "report_plots" / "interp_vs_recon.png").stat().st_size > 1000


@pytest.mark.slow
def test_sweep_evaluation_rerun_recomputes_nothing(evaluated, tiny_sweep):
    _, runs = evaluated
    before = {(run, name): (run / "eval" / name).read_bytes() for run in runs for name in OUTPUTS}
    again = run_script("evaluate.py", [f"sweep_dir={tiny_sweep}", "stage=all", *METRICS, *INTERP], timeout=1800)
    assert again.stdout.count("already evaluated under this protocol; skipping") == 2
    assert "[sweep] loading" not in again.stdout and "computing" not in again.stdout
    assert all((run / "eval" / name).read_bytes() == data for (run, name), data in before.items())
    # another protocol (more features) is another evaluation: the SAEs are evaluated again
    proto = read_json(tiny_sweep / "eval" / "sweep_evaluation.json")["protocol"]
    assert proto["interp"]["n_features"] == 3


@pytest.mark.slow
def test_replayed_held_out_pass_gives_the_records_of_a_fresh_one(evaluated, tmp_path):
    """One SAE evaluated alone on the features the sweep drew: the same records, from its own model pass."""
    _, runs = evaluated
    run = runs[0]
    features = records(run)["units"]
    units = ",".join(str(u["unit"]) for u in features)
    run_script(
        "evaluate.py",
        [f"sae_path={run}", "stage=interp", *INTERP, f"interp.features=[{units}]", f"hydra.run.dir={tmp_path / 'alone'}"],
        timeout=1800,
    )
    alone = read_json(tmp_path / "alone" / "interp" / "records_features.json")
    assert alone["units"] == features


@pytest.mark.slow
def test_metrics_per_corpus_differ_and_resume(evaluated):
    _, runs = evaluated
    run = runs[1]
    args = [f"sae_path={run}", *METRICS, "metrics.density_tokens=0", "eval_corpora=[shakespeare,code,mixed]"]
    first = run_script("evaluate.py", args, timeout=1800)
    table = read_json(run / "eval" / "metrics_by_corpus.json")["corpora"]
    assert list(table) == ["mixed (training)", "shakespeare", "code"]  # mixed is the training data: one row
    training = read_json(run / "eval" / "metrics.json")
    assert table["mixed (training)"]["reconstruction_score"] == training["reconstruction_score"]
    for name in ("shakespeare", "code"):
        assert "[" + name + "] [spliced_loss] computing" in first.stdout
        assert list((run / "eval" / "parts" / "corpora").glob(f"{name}-*/heldout.json"))
    blocks = list(table.values())
    for key in ("ce_clean", "ce_reconstructed", "l0", "explained_variance", "reconstruction_score", "kl_score"):
        values = [b[key] for b in blocks]
        assert all(v is not None for v in values) and len(set(values)) == 3, (key, values)
    assert table["shakespeare"]["ce_tokens"] == table["code"]["ce_tokens"] == 2 * 63
    md = (run / "eval" / "metrics_by_corpus.md").read_text()
    assert "| shakespeare |" in md and "| code |" in md and "recon. score" in md

    again = run_script("evaluate.py", args, timeout=1800)
    assert "computing" not in again.stdout and again.stdout.count("reusing") == 2 + 2 + 2 * 2
    assert read_json(run / "eval" / "metrics_by_corpus.json")["corpora"] == table
    assert json.loads((run / "eval" / "metrics.json").read_text()) == training
