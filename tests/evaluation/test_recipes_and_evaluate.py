"""Both training recipes on the embedded default (real Hydra runs), their schedules, and evaluate.py end to end."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from support.runs import read_json, run_script, train_tiny

from sae.formats.native import load_sae
from sae.training.module import l1_warmup_factor, lr_decay_factor

STEPS = 200  # TINY: 51,200 tokens at batch 256
# float32: bf16 autocast is ~10x slower per step on CPUs without native bf16 (AVX2-only CI machines).
SMALL_EVAL = ["trainer.eval_tokens=128", "sae.dtype=float32"]


@pytest.fixture(scope="module")
def run_2023(tmp_path_factory, activation_cache_dir):
    run_dir = tmp_path_factory.mktemp("run2023")
    train_tiny(run_dir, activation_cache_dir, "sae=anthropic_2023", *SMALL_EVAL)
    return run_dir


@pytest.fixture(scope="module")
def run_2024(tmp_path_factory, activation_cache_dir):
    run_dir = tmp_path_factory.mktemp("run2024")
    train_tiny(run_dir, activation_cache_dir, "sae=anthropic_2024", "logger=csv", *SMALL_EVAL)
    return run_dir


def test_schedule_shapes():
    total = 1000
    warm = [l1_warmup_factor(s, total, 0.05) for s in range(total)]
    assert warm[0] == pytest.approx(1 / 50) and warm[24] == pytest.approx(0.5) and warm[49:] == [1.0] * (total - 49)
    assert all(b >= a for a, b in zip(warm, warm[1:], strict=False))
    lr = [lr_decay_factor(s, total, 0.2) for s in range(total)]
    assert lr[:800] == [1.0] * 800
    assert lr[900] == pytest.approx(0.5) and lr[-1] == pytest.approx(1 / 200)
    assert all(b < a for a, b in zip(lr[800:], lr[801:], strict=False))


@pytest.mark.slow
def test_2023_recipe_trains_with_resampling_and_a_reconstruction_score(run_2023):
    summary = read_json(run_2023 / "summary.json")
    assert summary["steps"] == STEPS
    # 51,200 tokens cannot hold one honest dead window (~3e5 tokens for density 1e-5): no resample, none wrongly.
    assert summary["resample/events"] == 0 and summary["resample/dead_window_tokens"] >= 299_000
    assert 0 < summary["eval/ce_clean"] < summary["eval/ce_zero_ablated"]
    assert math.isfinite(summary["eval/reconstruction_score"]) and math.isfinite(summary["eval/kl_score"])
    sae, cfg = load_sae(run_2023)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_features))  # unit-norm decoder
    assert float(sae.input_scale) == 1.0
    assert cfg["train_config"]["sae"]["recipe"] == "anthropic_2023"
    assert cfg["architecture"] == "relu" and cfg["settings"]["unit_norm_decoder"] is True


@pytest.mark.slow
def test_2024_recipe_trains_and_follows_its_schedules(run_2024):
    summary = read_json(run_2024 / "summary.json")
    assert summary["steps"] == STEPS
    assert "resample/events" not in summary  # no resampling in the 2024 recipe
    sae, _ = load_sae(run_2024)
    norms = sae.W_dec.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # no unit-norm constraint
    assert float(sae.input_scale) != 1.0  # inputs scaled to E||x|| = sqrt(d)
    rows = list(csv.DictReader(open(run_2024 / "csv" / "metrics.csv")))
    # The module logs every trainer.log_every_n_steps=10 steps (TINY); rows in between may repeat the last value.
    fresh = [r for r in rows if r.get("train/lr") and int(r["step"]) % 10 == 0]
    l1 = {int(r["step"]): float(r["train/l1_coefficient"]) for r in fresh}
    lr = {int(r["step"]): float(r["train/lr"]) for r in fresh}
    lam, peak = 5.0, 5e-4
    warmup, decay_start = int(0.05 * STEPS), int(0.8 * STEPS)  # 10, 160
    assert l1[0] == pytest.approx(lam / warmup)  # λ ramps up linearly ...
    assert all(v == pytest.approx(lam) for s, v in l1.items() if s >= warmup)  # ... then stays
    assert all(v == pytest.approx(peak) for s, v in lr.items() if s < decay_start)  # lr flat ...
    decay = [(s, v) for s, v in sorted(lr.items()) if s >= decay_start]
    assert len(decay) >= 3
    for s, v in decay:  # ... then linearly to 0 over the last 20%
        assert v == pytest.approx(peak * (STEPS - s) / (STEPS - decay_start))


@pytest.mark.slow
def test_evaluate_end_to_end_and_resume(run_2023):
    args = [
        f"sae_path={run_2023 / 'sae'}",
        "metrics.ce_tokens=128",
        "metrics.heldout_tokens=3000",
        "metrics.density_tokens=8000",
        "metrics.absorption_words=400",
    ]
    first = run_script("evaluate.py", args)
    eval_dir = run_2023 / "eval"  # the training run's directory, found from its sae/ directory
    metrics = read_json(eval_dir / "metrics.json")
    for key in (
        "reconstruction_score",
        "kl_score",
        "ce_clean",
        "ce_zero_ablated",
        "ce_reconstructed",
        "l0",
        "explained_variance",
        "mse",
        "cosine_similarity",
        "norm_ratio",
        "dead_fraction",
        "ultralow_fraction",
        "decoder_cosine_rest",
        "absorption_absorption_fraction",
        "absorption_full_absorption_rate",
        "absorption_probe_f1",
    ):
        assert key in metrics, key
    assert 0 <= metrics["absorption_absorption_fraction"] <= 1 and 0 <= metrics["absorption_probe_f1"] <= 1
    assert metrics["ce_tokens"] == 2 * 63  # 128 tokens -> 2 contexts of 64, 63 predictions each
    assert metrics["density_tokens"] == 8000 and 0 < metrics["heldout_tokens"] <= 3000
    assert 0 <= metrics["dead_fraction"] <= metrics["ultralow_fraction"] <= 1
    assert metrics["l0"] > 0 and metrics["explained_variance"] <= 1 and metrics["mse"] > 0
    assert metrics["ce_zero_ablated"] > metrics["ce_clean"]
    for png in ("density_histogram.png", "decoder_similarity.png"):
        assert (eval_dir / png).stat().st_size > 1000
    assert (eval_dir / "wandb").is_dir()
    assert "[spliced_loss] computing" in first.stdout

    again = run_script("evaluate.py", args)  # a rerun reuses every finished part
    assert "computing" not in again.stdout and again.stdout.count("reusing") == 4
    assert read_json(eval_dir / "metrics.json") == metrics

    bad = run_script("evaluate.py", [*args, "stage=bogus"], check=False)
    assert bad.returncode == 2 and "stage=" in bad.stderr


@pytest.mark.slow
def test_evaluations_of_two_saes_share_the_zero_ablated_run(run_2023, run_2024):
    args = ["metrics.ce_tokens=128", "metrics.heldout_tokens=0", "metrics.density_tokens=0"]
    run_script("evaluate.py", [f"sae_path={run_2023}", *args])  # computes it, or finds it (and its part) stored
    other = run_script("evaluate.py", [f"sae_path={run_2024}", *args])
    assert "[spliced_loss] zero-ablated run: 1 of 1 batches reused" in other.stdout
    first, second = (read_json(run / "eval" / "metrics.json") for run in (run_2023, run_2024))
    assert second["ce_zero_ablated"] == first["ce_zero_ablated"] and second["ce_clean"] == first["ce_clean"]
    assert second["ce_reconstructed"] != first["ce_reconstructed"]


def test_run_directory_names_with_equals_signs_reach_hydra_intact():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from evaluate import quote_sae_path

    path = "outputs/smollm2-L6-hook_mlp_out/wiki/anthropic_2023_x8_l1=3e-4_lr=1e-4_tok=4M"
    parsed = OverridesParser.create().parse_overrides([quote_sae_path(f"sae_path={path}")])[0]
    assert parsed.key_or_group == "sae_path" and parsed.value() == path
    assert quote_sae_path("metrics.ce_tokens=5") == "metrics.ce_tokens=5"
