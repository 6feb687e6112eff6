"""The sweep report's interpretability columns, explicit metric sources and the rank correlation, on run
directories laid out as train.py and evaluate.py leave them (values chosen so the answers are known)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sae.sweeps.report import build_report, find_run_dirs, rank_correlation
from sae.training.identity import write_identity


def fake_run(sweep: Path, name: str, sae: dict, summary: dict, metrics: dict | None = None, interp: dict | None = None) -> Path:
    """A finished run directory: sae/cfg.json, summary.json, and optionally eval/metrics.json and
    eval/interp_summary.json (interp: own mean, interval, control mean)."""
    run = sweep / name
    (run / "sae").mkdir(parents=True)
    cfg = {"model": {"name": "m", "layer": 2, "hook": "h"}, "data": {"source": "wiki_offline"}, "activations": {}, "sae": sae}
    (run / "sae" / "cfg.json").write_text(json.dumps({"train_config": cfg}))
    (run / "sae" / "sae.safetensors").write_bytes(b"x")
    (run / "summary.json").write_text(json.dumps({"run_name": name, **summary}))
    write_identity(run, dict(cfg.items()))
    (run / "eval" / ".hydra").mkdir(parents=True)  # evaluate.py's own Hydra record: not a run
    (run / "eval" / ".hydra" / "config.yaml").write_text("stage: all\n")
    if metrics is not None:
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if interp is not None:
        own, low, high, control = interp["mean"], interp["low"], interp["high"], interp["control"]
        summary = {
            "features": {
                "primary_method": "token_pattern",
                "split": "top_and_random",
                "spearman": {"mean": own, "ci95": [low, high], "n_units": 8},
                "control_spearman": {"mean": control, "ci95": [control - 0.1, control + 0.1], "n_units": 8},
            }
        }
        (run / "eval" / "interp_summary.json").write_text(json.dumps(summary))
    return run


def test_rank_correlation_known_answers():
    # ranks differ by (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    result = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_resamples=500, seed=3)
    assert result["spearman"] == pytest.approx(0.8)
    low, high = result["ci95"]
    assert -1 <= low < 0.8 < high <= 1 and result["n"] == 5 and 0 < result["resamples"] <= 500
    assert rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_resamples=500, seed=3) == result  # seeded
    perfect = rank_correlation([0.1, 0.5, 0.7, 0.9], [3.0, 2.0, 1.0, 0.0])
    assert perfect["spearman"] == pytest.approx(-1.0) and perfect["ci95"] == pytest.approx([-1.0, -1.0])
    assert rank_correlation([1, 2], [2, 1])["spearman"] is None  # too few settings


BASE = {"recipe": "anthropic_2023", "architecture": "relu", "expansion": 4, "lr": 1e-3, "tokens": 1000}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Four settings (L1 values); the first with two seeds. Reconstruction scores rise with the setting,
    interpretability ranks 2, 1, 4, 3: rho = 1 - 6 * 4 / (4 * 15) = 0.6."""
    sweep = tmp_path / "sweep"
    recon = [0.6, 0.7, 0.8, 0.9]
    interp = [0.2, 0.1, 0.4, 0.3]
    for i, l1 in enumerate([1e-3, 2e-3, 3e-3, 4e-3]):
        sae = {**BASE, "l1_coefficient": l1, "seed": 0}
        # metrics.json (evaluate.py) for runs 0 and 1, which the report prefers to the run's own summary
        metrics = {"l0": 5.0 + i, "reconstruction_score": recon[i], "kl_score": recon[i] + 0.05} if i < 2 else None
        summary = {"eval/l0": 50.0, "eval/reconstruction_score": 0.0 if i < 2 else recon[i], "eval/kl_score": 0.5}
        summary["train/explained_variance"] = 0.4
        scores = {"mean": interp[i], "low": interp[i] - 0.05, "high": interp[i] + 0.1, "control": 0.01 * i}
        fake_run(sweep, f"s{i}_seed=0-h{i}", sae, summary, metrics, scores)
    # a second seed of setting 0: its mean stays 0.6 / 0.2 (0.55, 0.65 and 0.15, 0.25 around it)
    fake_run(
        sweep,
        "s0_seed=1-h9",
        {**BASE, "l1_coefficient": 1e-3, "seed": 1},
        {"eval/l0": 50.0},
        {"l0": 7.0, "reconstruction_score": 0.65, "kl_score": 0.7},
        {"mean": 0.25, "low": 0.2, "high": 0.3, "control": 0.0},
    )
    (sweep / "s0_seed=0-h0" / "eval" / "metrics.json").write_text(
        json.dumps({"l0": 5.0, "reconstruction_score": 0.55, "kl_score": 0.65})
    )
    (sweep / "s0_seed=0-h0" / "eval" / "interp_summary.json").write_text(
        (sweep / "s0_seed=0-h0" / "eval" / "interp_summary.json").read_text().replace('"mean": 0.2,', '"mean": 0.15,')
    )
    return sweep


def test_report_reads_explicit_sources_and_interpretability(sweep):
    assert len(find_run_dirs(sweep)) == 5  # the eval/.hydra records are not runs
    report = build_report(sweep)
    rows = {r.run: r for r in report.rows}
    first, third = rows["s1_seed=0-h1"], rows["s2_seed=0-h2"]
    # metrics.json over summary.json, per metric, and the source named
    assert (first.l0, first.l0_source) == (6.0, "eval/metrics.json:l0")
    assert (first.reconstruction_score, first.reconstruction_score_source) == (0.7, "eval/metrics.json:reconstruction_score")
    assert first.kl_score == pytest.approx(0.75) and first.kl_score_source == "eval/metrics.json:kl_score"
    assert (third.l0, third.l0_source) == (50.0, "summary.json:eval/l0")
    assert (third.kl_score, third.kl_score_source) == (0.5, "summary.json:eval/kl_score")
    assert (third.explained_variance, third.explained_variance_source) == (0.4, "summary.json:train/explained_variance")
    # interpretability with its interval and control
    assert (third.interp, third.interp_ci_low, third.interp_ci_high, third.interp_control) == pytest.approx(
        (0.4, 0.35, 0.5, 0.02)
    )
    assert (third.interp_n_units, third.interp_method, third.interp_split) == (8, "token_pattern", "top_and_random")
    # across seeds
    seeded = rows["s0_seed=0-h0"]
    assert (
        seeded.n_seeds == 2
        and seeded.interp_mean == pytest.approx(0.2)
        and seeded.reconstruction_score_mean == pytest.approx(0.6)
    )
    assert seeded.interp_ci95 == pytest.approx(12.706205 * 0.05, rel=1e-5)  # t(0.975, 1) * sd / sqrt(2), sd = 0.05 * sqrt(2)
    # the rank correlation over the four settings' means
    corr = report.correlations["reconstruction_score"]
    assert corr["spearman"] == pytest.approx(0.6) and corr["n"] == 4
    assert -1 <= corr["ci95"][0] <= 0.6 <= corr["ci95"][1] <= 1
    assert report.correlations["l0"]["n"] == 4
    md = report.markdown.read_text()
    assert "**0.60**" in md and "interpretability across 4 settings" in md
    assert "| interp. [95%] | control |" in md and "0.400 [0.35, 0.50]" in md
    assert "`eval/metrics.json:l0` (3 runs), `summary.json:eval/l0` (2 runs)" in md
    with open(sweep / "report.csv") as f:
        csv_rows = {r["run"]: r for r in csv.DictReader(f)}
    assert csv_rows["s2_seed=0-h2"]["l0_source"] == "summary.json:eval/l0"
    assert float(csv_rows["s2_seed=0-h2"]["interp_control"]) == pytest.approx(0.02)
    for png in ("interp_vs_recon.png", "interp_vs_l0.png"):
        assert (sweep / "report_plots" / png).stat().st_size > 1000


def test_report_without_interpretability_keeps_its_columns(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "a", {**BASE, "l1_coefficient": 1e-3, "seed": 0}, {"eval/l0": 3.0})
    md = build_report(sweep).markdown.read_text()
    assert "interp." not in md and "KL score" not in md and "## Interpretability" not in md
    assert not (sweep / "report_plots" / "interp_vs_recon.png").exists()
