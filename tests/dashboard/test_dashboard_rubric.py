"""The rubric report's statistics, checked by hand on a small set of ratings, and its W&B log."""

from __future__ import annotations

import math
import time

import pytest

from sae.core.tracking import LoggerConfig
from sae.dashboard import rubric

# (kind, unit, confidence, activations, logits, specificity)
RATINGS = [
    ("features", 1, 4, 4, 4, 4),  # overall 4
    ("features", 2, 5, 5, 3, 3),  # overall 4
    ("features", 3, 2, 3, 1, 2),  # overall 2
    ("neurons", 7, 1, 1, 0, 2),  # overall 1
    ("neurons", 8, 2, 1, 1, 0),  # overall 1
]


def fill(path):
    db = rubric.connect(path)
    for kind, unit, *scores in RATINGS:
        rating = rubric.validate(
            {"rater": "dev", "kind": kind, "unit": unit, "scores": dict(zip(rubric.CRITERIA, scores, strict=False))},
            {"features": 10, "neurons": 10},
        )
        rubric.insert(db, rating, sae="abc", blind=kind == "neurons")
    db.commit()
    db.close()


def test_means_and_95_intervals_by_hand(tmp_path):
    fill(tmp_path / "r.sqlite")
    s = rubric.summarise(tmp_path / "r.sqlite", sae="abc")
    f, n = s["features"], s["neurons"]
    # features overall: 4, 4, 2 -> mean 10/3, sd sqrt(4/3), t(0.975, 2) = 4.302653
    assert f["overall"]["n"] == 3 and f["overall"]["mean"] == pytest.approx(10 / 3)
    assert f["overall"]["sd"] == pytest.approx(math.sqrt(4 / 3))
    half = 4.302653 * math.sqrt(4 / 3) / math.sqrt(3)
    assert f["overall"]["ci95"] == pytest.approx([10 / 3 - half, 10 / 3 + half], abs=1e-5)
    # features confidence: 4, 5, 2 -> mean 11/3, sd sqrt(7/3)
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert f["confidence"]["ci95"] == pytest.approx([11 / 3 - half, 11 / 3 + half], abs=1e-5)
    # neurons confidence: 1, 2 -> mean 1.5, sd sqrt(0.5), t(0.975, 1) = 12.706205
    half = 12.706205 * math.sqrt(0.5) / math.sqrt(2)
    assert n["confidence"]["mean"] == 1.5 and n["confidence"]["ci95"] == pytest.approx([1.5 - half, 1.5 + half], abs=1e-5)
    # neurons overall 1, 1: no spread, an interval of zero width
    assert n["overall"]["mean"] == 1.0 and n["overall"]["ci95"] == pytest.approx([1.0, 1.0])
    assert (f["n_blind"], n["n_blind"]) == (0, 2)
    # another SAE's ratings are not mixed in
    assert rubric.summarise(tmp_path / "r.sqlite", sae="other")["features"]["overall"]["n"] == 0
    assert rubric.unit_means(tmp_path / "r.sqlite", "abc") == {"features": {1: 4.0, 2: 4.0, 3: 2.0}, "neurons": {7: 1.0, 8: 1.0}}


def test_report_files_and_wandb_offline(tmp_path, monkeypatch):
    from support.wandb_records import history, run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    fill(tmp_path / "r.sqlite")
    out = tmp_path / "rubric"
    rubric.report(tmp_path / "r.sqlite", out, sae="abc", logger_cfg=LoggerConfig(kind="wandb", mode="offline", project="t"))
    table = (out / "rubric_report.md").read_text()
    assert "| features | 3 (0) | 3.67 [" in table and "| neurons | 2 (2) | 1.50 [" in table
    assert (out / "rubric_histogram.png").stat().st_size > 1000
    logged: dict = {}
    for _ in range(40):  # the W&B core may still be flushing the file when finish() returns
        logged = {k: v for row in history(run_file(out)) for k, v in row.items()}
        if "rubric/features/overall_mean" in logged:
            break
        time.sleep(0.5)
    assert logged["rubric/features/overall_mean"] == pytest.approx(10 / 3)
    assert logged["rubric/neurons/confidence_n"] == 2
    assert logged["rubric/table/_type"] == "table-file" and logged["rubric/histogram/_type"] == "image-file"


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ratings yet"):
        rubric.report(tmp_path / "none.sqlite", tmp_path / "out")
