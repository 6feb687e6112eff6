"""Sweeps end to end: the `smoke` sweep through hydra-submitit-launcher's local launcher (parallel
processes), one shared activation harvest, the report written when the multirun ends, and a
re-run that skips finished runs and resumes an interrupted one. The sweep configs compose, too.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import wandb_records
from conftest import REPO, read_json, run_script

SWEEPS = ["smoke", "expansion", "lr_l1", "tokens", "slides"]


@pytest.fixture
def hydra_compose():
    """Hydra's compose API on conf/ (the sweeps are the `sweep` group, conf/sweep -> ../sweeps)."""
    from sae.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_config_composes(hydra_compose, name):
    cfg = hydra_compose([f"+sweep={name}"])
    assert cfg.sweep.name == name
    assert cfg.logger.group == name
    assert f"sweep:{name}" in cfg.logger.tags
    assert cfg.hydra.sweeper.params, "a sweep sets hydra.sweeper.params"
    assert cfg.hydra.sweep.dir == f"multirun/{name}"


def test_slides_sweep_is_the_slides_setup(hydra_compose):
    cfg = hydra_compose(["+sweep=slides", "hydra/launcher=slurm"])
    assert (cfg.model.name, cfg.model.layer, cfg.model.hook) == ("distilgpt2", 5, "hook_mlp_out")
    assert cfg.data.alias == "pile"
    assert (cfg.sae.lr, list(cfg.sae.betas), cfg.sae.l1_coefficient) == (1e-4, [0.9, 0.99], 3e-4)
    params = cfg.hydra.sweeper.params
    assert params["sae.expansion"] == "8,32"
    assert params["sae.tokens"] == "2_000_000_000,3_000_000_000,4_000_000_000"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.max_num_timeout >= 1  # timeouts requeue and resume


def test_command_line_overrides_beat_the_sweep(hydra_compose):
    cfg = hydra_compose(["+sweep=smoke", "sae.batch_size=128", "logger.group=mine"])
    assert cfg.sae.batch_size == 128 and cfg.logger.group == "mine"


def wandb_run_record(run_dir: Path) -> tuple[str, list[str], str]:
    """(group, tags, display name) of the run's offline W&B record, as `wandb sync` would upload them."""
    from wandb.proto import wandb_internal_pb2

    for payload in wandb_records._payloads(wandb_records.run_file(run_dir).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "run":
            return record.run.run_group, list(record.run.tags), record.run.display_name
    raise AssertionError(f"no run record in {run_dir}")


def _runs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/summary.json"))


@pytest.mark.slow
def test_smoke_sweep_submitit_local_harvests_once_and_reports(tmp_path):
    sweep_dir, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    args = ["--multirun", "+sweep=smoke", "hydra/launcher=local", f"hydra.sweep.dir={sweep_dir}", f"activations.cache_dir={cache_dir}"]
    run_script("train.py", args, timeout=1800)

    runs = _runs(sweep_dir)
    assert len(runs) == 4, sorted(p.name for p in sweep_dir.iterdir())
    # One harvest for the four runs: one finished cache entry, no leftover temporary directory, and
    # exactly one job printed the harvest progress (the others waited on the lock, then read it).
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").exists(), entries
    job_logs = [p.read_text(errors="replace") for p in (sweep_dir / ".submitit").glob("*/*_log.err")]
    assert len(job_logs) == 4
    assert sum("harvest activations" in log for log in job_logs) == 1

    # W&B: one group named after the sweep, the swept values as tags, the run name; in the config and
    # in the offline run record that `wandb sync` uploads.
    for run in runs:
        cfg = read_json(run / "sae" / "cfg.json")["train_config"]
        tags = cfg["logger"]["tags"]
        assert cfg["logger"]["group"] == "smoke"
        assert tags == ["sweep:smoke", f"x{cfg['sae']['expansion']}", f"l1={cfg['sae']['l1_coefficient']:.0e}".replace("e-0", "e-")]
        assert wandb_run_record(run) == ("smoke", tags, cfg["run_name"])

    # The report, written by the Hydra callback when the multirun ended: a row per run, real metrics.
    with open(sweep_dir / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(r.name for r in runs)
    for row in rows:
        summary = read_json(sweep_dir / row["path"] / "summary.json")
        assert row["status"] == "finished"
        assert float(row["l0"]) == pytest.approx(summary["train/l0"]) and float(row["l0"]) > 0
        assert 0 < float(row["explained_variance"]) <= 1
        assert 0 <= float(row["dead_pct"]) <= 100
    assert {(int(r["expansion"]), float(r["l1_coefficient"])) for r in rows} == {(1, 3e-4), (1, 3e-3), (4, 3e-4), (4, 3e-3)}
    for png in ("frontier.png", "metrics_vs_expansion.png", "density_histograms.png"):
        assert (sweep_dir / "report_plots" / png).stat().st_size > 1000
    assert "| run |" in (sweep_dir / "report.md").read_text()
    group, _, name = wandb_run_record(sweep_dir)  # the report's own W&B run, in the sweep's group
    assert (group, name) == ("smoke", "smoke-report")

    # Re-running the sweep skips the finished runs and resumes an interrupted one from its last.ckpt.
    interrupted = runs[0]
    shutil.rmtree(interrupted / "sae")
    (interrupted / "summary.json").unlink()
    before = {r: (r / "summary.json").read_text() for r in runs[1:]}
    proc = run_script("train.py", [a for a in args if a != "hydra/launcher=local"], timeout=1800)
    out = proc.stdout + proc.stderr
    assert out.count("already holds a finished SAE; skipping") == 3
    assert f"resuming from {interrupted / 'checkpoints' / 'last.ckpt'}" in out
    assert read_json(interrupted / "summary.json")["steps"] == 100
    assert all((r / "summary.json").read_text() == text for r, text in before.items())


def test_report_command_lists_unfinished_runs(tmp_path):
    """`python -m sae.report DIR` on a sweep whose jobs have not written a summary yet."""
    from sae.report import main

    run = tmp_path / "sweep" / "smollm2-L2-hook_mlp_out_x8"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("sae:\n  expansion: 8\n  l1_coefficient: 0.0003\n  lr: 0.0001\n  tokens: 1000\n")
    assert main([str(tmp_path / "sweep")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "report.csv")))
    assert [(r["status"], r["expansion"], r["l0"]) for r in rows] == [("unfinished", "8", "")]
