"""Sweeps end to end: the `smoke` sweep through hydra-submitit-launcher's local launcher (parallel
processes), one shared activation harvest, the report written when the multirun ends, and a
re-run that skips finished runs and resumes an interrupted one. The sweep configs compose, too.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import support.wandb_records as wandb_records
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from support.runs import REPO, read_json, run_script

SWEEPS = ["smoke", "expansion", "lr_l1", "tokens", "slides", "seeds", "architectures"]


@pytest.fixture
def hydra_compose():
    """Hydra's compose API on conf/ (the sweeps are the `sweep` group, conf/sweep -> ../sweeps)."""
    from sae.training.config import register_configs

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
    args = [
        "--multirun",
        "+sweep=smoke",
        "hydra/launcher=local",
        f"hydra.sweep.dir={sweep_dir}",
        f"activations.cache_dir={cache_dir}",
    ]
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
        assert tags == [
            "sweep:smoke",
            f"x{cfg['sae']['expansion']}",
            f"l1={cfg['sae']['l1_coefficient']:.0e}".replace("e-0", "e-"),
        ]
        assert wandb_run_record(run) == ("smoke", tags, cfg["run_name"])

    # The report, written by the Hydra callback when the multirun ended: a row per run, real metrics.
    with open(sweep_dir / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(r.name for r in runs)
    for row in rows:
        summary = read_json(sweep_dir / row["path"] / "summary.json")
        assert row["status"] == "finished"
        assert float(row["l0"]) == pytest.approx(summary["eval/l0"]) and float(row["l0"]) > 0  # held out
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
    from sae.sweeps.report import main

    run = tmp_path / "sweep" / "smollm2-L2-hook_mlp_out_x8"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("sae:\n  expansion: 8\n  l1_coefficient: 0.0003\n  lr: 0.0001\n  tokens: 1000\n")
    assert main([str(tmp_path / "sweep")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "report.csv")))
    assert [(r["status"], r["expansion"], r["l0"]) for r in rows] == [("unfinished", "8", "")]


def _fake_run(sweep: Path, name: str, sae: dict, summary: dict) -> None:
    """A run directory as train.py leaves it (the report reads only these files)."""
    import json

    from sae.training.identity import write_identity

    run = sweep / name
    (run / "sae").mkdir(parents=True)
    cfg = {"model": {"name": "m", "layer": 2, "hook": "h"}, "data": {"source": "wiki_offline"}, "activations": {}, "sae": sae}
    (run / "sae" / "cfg.json").write_text(json.dumps({"train_config": cfg}))
    (run / "sae" / "sae.safetensors").write_bytes(b"x")
    (run / "summary.json").write_text(json.dumps({"run_name": name, **summary}))
    write_identity(run, dict(cfg.items()))


def test_report_aggregates_seeds_by_hand(tmp_path):
    """Three seeds of one setting, one run of another: mean and t-interval checked by hand."""
    from sae.sweeps.report import build_report

    sweep = tmp_path / "sweep"
    base = {"recipe": "anthropic_2023", "expansion": 4, "l1_coefficient": 3e-3, "lr": 1e-3, "tokens": 1000}
    for seed, (l0, score) in enumerate([(10.0, 0.80), (12.0, 0.86), (14.0, 0.83)]):
        _fake_run(
            sweep,
            f"a_seed={seed}-h{seed}",
            {**base, "seed": seed},
            {"eval/l0": l0, "train/l0": 99.0, "eval/reconstruction_score": score, "eval/explained_variance": 0.5},
        )
    _fake_run(
        sweep,
        "b_seed=0-hb",
        {**base, "l1_coefficient": 1e-2, "seed": 0},
        {"eval/l0": 3.0, "eval/reconstruction_score": 0.7, "eval/explained_variance": 0.4},
    )
    report = build_report(sweep)
    rows = {r.run: r for r in report.rows}
    a = rows["a_seed=0-h0"]
    # mean 12, sd 2, t(0.975, 2) = 4.302653, half-width = 4.302653 * 2 / sqrt(3) = 4.968275
    assert (a.n_seeds, a.l0, a.l0_mean) == (3, 10.0, 12.0)
    assert a.l0_ci95 == pytest.approx(4.968275, abs=1e-5)
    assert a.reconstruction_score_mean == pytest.approx(0.83)
    assert a.reconstruction_score_ci95 == pytest.approx(4.302653 * 0.03 / 3**0.5, abs=1e-6)
    assert a.explained_variance_ci95 == pytest.approx(0.0)
    b = rows["b_seed=0-hb"]
    assert (b.n_seeds, b.l0_mean, b.l0_ci95) == (1, 3.0, None)
    assert len({r.setting for r in report.rows}) == 2
    csv_rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert {r["run"]: r["l0_ci95"] for r in csv_rows}["b_seed=0-hb"] == ""
    assert float({r["run"]: r["l0_mean"] for r in csv_rows}["a_seed=2-h2"]) == 12.0
    md = report.markdown.read_text()
    assert "| 0,1,2 | 12.0 ± 5.0 | 0.830 ± 0.075 | 0.500 ± 0.000 |" in md
    assert "differs in" not in md  # the names tell the runs apart
    assert (sweep / "report_plots" / "frontier.png").stat().st_size > 1000


def test_report_names_the_settings_that_runs_of_one_name_differ_in(tmp_path):
    """A sweep over a setting the run name leaves out (JumpReLU's starting threshold), two seeds each: the table
    says which threshold each run had, and the seeds of one threshold form one setting."""
    from sae.sweeps.report import build_report

    sweep = tmp_path / "sweep"
    base = {"recipe": "jumprelu", "expansion": 8, "l1_coefficient": 10.0, "lr": 5e-4, "tokens": 1000}
    for threshold, l0s in ((1.3, (32.0, 30.0)), (2.0, (15.0, 13.0))):
        for seed, l0 in enumerate(l0s):
            sae = {**base, "seed": seed, "settings": {"initial_threshold": threshold}}
            name = f"jumprelu_x8_seed={seed}-t{threshold}"
            _fake_run(sweep, name, sae, {"eval/l0": l0, "eval/reconstruction_score": 0.8, "eval/explained_variance": 0.5})
    report = build_report(sweep)
    differs = {r.run: r.differs_in for r in report.rows}
    assert differs["jumprelu_x8_seed=1-t1.3"] == "sae.settings.initial_threshold=1.3"
    assert differs["jumprelu_x8_seed=0-t2.0"] == "sae.settings.initial_threshold=2"
    md = report.markdown.read_text()
    assert "| 0 | sae.settings.initial_threshold=1.3 | 32.0 |" in md
    assert "(sae.settings.initial_threshold=1.3) | 0,1 | 31.0 ± " in md
    assert "(sae.settings.initial_threshold=2) | 0,1 | 14.0 ± " in md


def test_frontier_draws_one_curve_per_recipe(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from sae.sweeps.report import aggregate, collect
    from sae.sweeps.report_plots import plot_frontier

    sweep = tmp_path / "sweep"
    for recipe, l1s in (("anthropic_2023", (1e-3, 1e-2)), ("anthropic_2024", (1.0, 5.0))):
        for i, l1 in enumerate(l1s):
            _fake_run(
                sweep,
                f"{recipe}_{i}",
                {
                    "recipe": recipe,
                    "architecture": "relu",
                    "expansion": 4,
                    "l1_coefficient": l1,
                    "lr": 1e-3,
                    "tokens": 1000,
                    "seed": 0,
                },
                {"eval/l0": 10.0 * (i + 1), "eval/reconstruction_score": 0.5 + 0.1 * i},
            )
    rows = collect(sweep)
    drawn, errorbar = [], plt.Axes.errorbar

    def recording_errorbar(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y)))
        return errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "errorbar", recording_errorbar)
    assert plot_frontier(rows, aggregate(rows), tmp_path / "f.png").stat().st_size > 1000
    assert sorted(drawn) == [("anthropic_2023", [10.0, 20.0], [0.5, 0.6]), ("anthropic_2024", [10.0, 20.0], [0.5, 0.6])]
