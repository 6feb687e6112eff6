"""Every distinct training config gets its own run directory, and a directory is never resumed or
skipped under another config. A real multirun over values that shared one directory before
(lr 2.5e-4 / 3.5e-4 both rounded to 3e-4; the seed not in the name) makes four runs with four
different results, and its report aggregates the two seeds of each lr.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from support.runs import TINY, read_json, run_script

from sae.core.errors import ConfigError
from sae.training.config import register_configs
from sae.training.identity import (
    RUN_CONFIG,
    check_checkpoint,
    claim_run_dir,
    identity_hash,
    number,
    run_label,
    run_name,
    tokens_label,
    training_identity,
)


def _cfg(**sae):
    return {
        "model": {
            "name": "embedded:smollm2",
            "alias": "smollm2",
            "layer": 2,
            "hook": "hook_mlp_out",
            "dtype": "float32",
            "device": "auto",
        },
        "data": {"source": "wiki_offline", "alias": "wiki", "context_length": 64},
        "activations": {"cache": True, "cache_dir": "/a", "n_tokens": 20000, "harvest_batch_size": 32},
        "sae": {
            "recipe": "anthropic_2023",
            "expansion": 2,
            "l1_coefficient": 5e-3,
            "lr": 2.5e-4,
            "tokens": 51200,
            "seed": 0,
            "betas": [0.9, 0.99],
            "resample": {"enabled": True, "n_inputs": 100},
            **sae,
        },
        "trainer": {"log_every_n_steps": 10, "checkpoint_every_n_steps": 50, "progress_bar": False},
        "logger": {"kind": "csv"},
    }


def test_numbers_in_names_are_exact():
    assert [number(v) for v in (2.5e-4, 3.5e-4, 3e-4, 1e-3, 1.5e-4, 5.0, 0.9, 0.05, 123456789.0)] == [
        "2.5e-4",
        "3.5e-4",
        "3e-4",
        "1e-3",
        "1.5e-4",
        "5",
        "0.9",
        "0.05",
        "1.23456789e8",
    ]
    assert [tokens_label(v) for v in (51200, 1_234_567, 2_000_000_000, 999)] == ["51.2k", "1.234567M", "2B", "999"]


def test_every_training_setting_changes_the_name_and_nothing_else_does():
    base = run_name(_cfg())
    assert base.startswith("anthropic_2023_x2_l1=5e-3_lr=2.5e-4_tok=51.2k_seed=0-")
    changed = [
        _cfg(lr=3.5e-4),
        _cfg(seed=1),
        _cfg(betas=[0.9, 0.999]),
        _cfg(resample={"enabled": True, "n_inputs": 200}),
        _cfg(batch_size=128),
        _cfg(dtype="bf16"),
        _cfg(k=32),
        _cfg(architecture="topk"),
        _cfg(some_future_field=1),
    ]
    for cfg in (_cfg(), _cfg()):  # deterministic
        assert run_name(cfg) == base
    other = _cfg()
    other["data"]["context_length"] = 128
    changed.append(other)
    other = _cfg()
    other["model"]["layer"] = 3
    changed.append(other)
    names = [run_name(c) for c in changed]
    assert len(set(names) | {base}) == len(names) + 1
    # Where it runs, how often it logs or checkpoints, and where the cache lives do not make another run.
    same = _cfg()
    same["trainer"] = {"log_every_n_steps": 1, "checkpoint_every_n_steps": 7, "progress_bar": True}
    same["activations"]["cache_dir"] = "/elsewhere"
    same["model"]["device"] = "cuda"
    same["logger"] = {"kind": "wandb"}
    assert run_name(same) == base
    assert run_label(_cfg(k=32, architecture="topk")["sae"]).startswith("anthropic_2023_topk_x2_k=32_")


def test_resume_or_skip_across_configs_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    identity = training_identity(_cfg())
    claim_run_dir(run_dir, identity, has_progress=False)
    stored = read_json(run_dir / RUN_CONFIG)
    assert stored["hash"] == identity_hash(identity) and stored["identity"]["sae"]["lr"] == 2.5e-4
    claim_run_dir(run_dir, training_identity(_cfg()), has_progress=True)  # the same config: fine
    with pytest.raises(ConfigError) as err:
        claim_run_dir(run_dir, training_identity(_cfg(lr=3.5e-4, seed=1)), has_progress=True)
    message = str(err.value)
    assert "sae.lr" in message and "sae.seed" in message and "3.5e-4" in message.replace("0.00035", "3.5e-4")
    assert "\n" not in message and str(run_dir) in message
    assert read_json(run_dir / RUN_CONFIG) == stored  # the record is left alone
    # A directory with a checkpoint but no record cannot be checked: refused too.
    (tmp_path / "old").mkdir()
    with pytest.raises(ConfigError, match=RUN_CONFIG):
        claim_run_dir(tmp_path / "old", identity, has_progress=True)


def test_corrupt_checkpoint_is_named(tmp_path):
    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "global_step": 3}, good)
    check_checkpoint(good)
    data = bytearray(good.read_bytes())
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(bytes(data[: len(data) // 2]))
    flipped = tmp_path / "flipped.ckpt"
    i = data.find(b"data/0") + 200  # inside the tensor's bytes
    data[i] ^= 0xFF
    flipped.write_bytes(bytes(data))
    for path in (torn, flipped):
        with pytest.raises(ConfigError) as err:
            check_checkpoint(path)
        assert str(path) in str(err.value) and "trainer.resume=false" in str(err.value)


# ---------------------------------------------------------------- a real multirun

SMALL = [*TINY, "sae.tokens=12800", "trainer.heldout_tokens=4096", "trainer.threads=1", "logger=csv"]


@pytest.fixture(scope="module")
def lr_seed_sweep(tmp_path_factory, activation_cache_dir):
    """python train.py --multirun sae.lr=2.5e-4,3.5e-4 sae.seed=0,1 (basic launcher, one process)."""
    sweep_dir = tmp_path_factory.mktemp("lr_seed") / "sweep"
    args = ["--multirun", *SMALL, "sae.lr=2.5e-4,3.5e-4", "sae.seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    proc = run_script("train.py", args, activation_cache_dir, timeout=1500)
    return sweep_dir, args, activation_cache_dir, proc


@pytest.mark.slow
def test_colliding_values_make_distinct_runs_with_distinct_results(lr_seed_sweep):
    sweep_dir, args, cache_dir, _ = lr_seed_sweep
    runs = sorted(p.parent for p in sweep_dir.glob("*/summary.json"))
    assert len(runs) == 4
    settings = {
        (read_json(r / RUN_CONFIG)["identity"]["sae"]["lr"], read_json(r / RUN_CONFIG)["identity"]["sae"]["seed"]) for r in runs
    }
    assert settings == {(2.5e-4, 0), (2.5e-4, 1), (3.5e-4, 0), (3.5e-4, 1)}
    assert all("_relu_x2_" in r.name and ("lr=2.5e-4" in r.name or "lr=3.5e-4" in r.name) for r in runs)
    weights = [load_file(r / "sae" / "sae.safetensors")["W_dec"] for r in runs]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(weights[i], weights[j]), (runs[i].name, runs[j].name)
    summaries = [read_json(r / "summary.json") for r in runs]
    assert len({s["run_dir"] for s in summaries}) == 4
    assert len({(s["train/loss"], s["eval/l0"]) for s in summaries}) == 4
    for s in summaries:  # held-out statistics computed at the end of each run
        assert s["eval/heldout_tokens"] >= 4000 and s["eval/l0"] > 0 and s["eval/explained_variance"] <= 1

    # The same command again skips all four, each reporting its own summary.
    before = {r: (r / "summary.json").read_text() for r in runs}
    again = run_script("train.py", args, cache_dir, timeout=600)
    assert (again.stdout + again.stderr).count("already holds a finished SAE; skipping") == 4
    assert all((r / "summary.json").read_text() == text for r, text in before.items())


@pytest.mark.slow
def test_report_aggregates_the_seeds_of_each_setting(lr_seed_sweep):
    sweep_dir = lr_seed_sweep[0]
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    assert len(rows) == 4 and all(r["n_seeds"] == "2" for r in rows)
    by_lr: dict[str, list[dict]] = {}
    for r in rows:
        by_lr.setdefault(r["lr"], []).append(r)
    assert len(by_lr) == 2 and len({r["setting"] for r in rows}) == 2
    for members in by_lr.values():
        l0s = [read_json(sweep_dir / r["path"] / "summary.json")["eval/l0"] for r in members]
        mean = sum(l0s) / 2
        half = 12.706204736174703 * abs(l0s[0] - l0s[1]) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n)
        for r in members:
            assert float(r["l0"]) in l0s
            assert float(r["l0_mean"]) == pytest.approx(mean) and float(r["l0_ci95"]) == pytest.approx(half)
    md = (sweep_dir / "report.md").read_text()
    assert "## Across seeds" in md and "| 0,1 |" in md
    assert (sweep_dir / "report_plots" / "frontier.png").stat().st_size > 1000


def test_a_setting_outside_the_identity_may_name_the_run():
    """`activations.cache_dir=/caches/${run_name}`: the name is made from the identity, which leaves the cache
    directory out, so the two resolve without recursing, and the name is the one the plain config gets."""
    register_configs()
    cfg = OmegaConf.create({**_cfg(), "run_name": "${run_name:}"})
    cfg.activations.cache_dir = "/caches/${run_name}"
    assert cfg.run_name == run_name(_cfg())
    assert cfg.activations.cache_dir == f"/caches/{cfg.run_name}"
