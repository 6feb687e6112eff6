"""Sweep report: one table and a few plots that compare every run of a sweep directory.

    python -m sae.report multirun/smoke            # report.csv, report.md and plots/ in that directory
    python -m sae.report multirun/smoke --wandb    # ... and log them to W&B (group = the sweep)

It reads what the runs left on disk (`summary.json`, `.hydra/config.yaml`, `plots/density.png`), so
it works on any sweep directory, finished or not: runs without a summary are listed as unfinished.
`SweepReport` is the Hydra callback (see `hydra.callbacks` in conf/train.yaml) that writes the same
report when a `--multirun` ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

COLUMNS_MD = {  # report.md column -> (row field, format)
    "run": ("run", "{}"),
    "expansion": ("expansion", "{}x"),
    "L1": ("l1_coefficient", "{:.0e}"),
    "lr": ("lr", "{:.0e}"),
    "tokens": ("tokens", "{:,}"),
    "L0": ("l0", "{:.1f}"),
    "recon. score": ("reconstruction_score", "{:.3f}"),
    "expl. var.": ("explained_variance", "{:.3f}"),
    "dead %": ("dead_pct", "{:.1f}"),
    "ultralow %": ("ultralow_pct", "{:.1f}"),
    "status": ("status", "{}"),
}


@dataclass
class RunRow:
    """Final metrics of one run; None where the run did not (yet) produce the value."""

    run: str
    path: str  # relative to the sweep directory
    status: str  # "finished" | "unfinished"
    recipe: Optional[str] = None
    expansion: Optional[int] = None
    l1_coefficient: Optional[float] = None
    lr: Optional[float] = None
    tokens: Optional[int] = None  # the training budget (sae.tokens)
    steps: Optional[int] = None
    l0: Optional[float] = None
    reconstruction_score: Optional[float] = None
    explained_variance: Optional[float] = None
    dead_pct: Optional[float] = None
    ultralow_pct: Optional[float] = None


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under the sweep: one with Hydra's `.hydra/` record or a `summary.json`."""
    skip = {".submitit", "wandb", "plots", "checkpoints", "sae"}
    found = {p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")}
    found |= {p.parent for p in sweep_dir.rglob("summary.json")}
    return sorted(d for d in found if d != sweep_dir and not skip & set(d.relative_to(sweep_dir).parts))


def _run_config(run_dir: Path) -> dict:
    """The run's training config: resolved from sae/cfg.json when finished, else Hydra's record."""
    cfg_json = run_dir / "sae" / "cfg.json"
    if cfg_json.exists():
        return json.loads(cfg_json.read_text()).get("train_config", {})
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.exists():  # unresolved: only plain values are read from it
        return OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False)
    return {}


def _find_metric(summary: dict, name: str) -> Optional[float]:
    """`name` as logged under any prefix (eval/reconstruction_score, train/l0, ...)."""
    for key, value in summary.items():
        if (key == name or key.endswith("/" + name)) and isinstance(value, (int, float)):
            return float(value)
    return None


def _plain(value: Any, kind: type) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):  # missing, or an unresolved interpolation
        return None


def read_run(run_dir: Path, sweep_dir: Path) -> RunRow:
    cfg = _run_config(run_dir)
    sae = cfg.get("sae", {}) if isinstance(cfg.get("sae"), dict) else {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    finished = bool(summary) and (run_dir / "sae" / "sae.safetensors").exists()
    pct = lambda v: None if v is None else 100.0 * v  # noqa: E731
    return RunRow(
        run=str(summary.get("run_name") or run_dir.name),
        path=str(run_dir.relative_to(sweep_dir)),
        status="finished" if finished else "unfinished",
        recipe=sae.get("recipe"),
        expansion=_plain(sae.get("expansion"), int),
        l1_coefficient=_plain(sae.get("l1_coefficient"), float),
        lr=_plain(sae.get("lr"), float),
        tokens=_plain(sae.get("tokens"), int),
        steps=_plain(summary.get("steps"), int),
        l0=_find_metric(summary, "l0"),
        reconstruction_score=_find_metric(summary, "reconstruction_score"),
        explained_variance=_find_metric(summary, "explained_variance"),
        dead_pct=pct(_find_metric(summary, "dead_fraction")),
        ultralow_pct=pct(_find_metric(summary, "ultralow_fraction")),
    )


def collect(sweep_dir: str | Path) -> list[RunRow]:
    sweep_dir = Path(sweep_dir)
    return [read_run(d, sweep_dir) for d in find_run_dirs(sweep_dir)]


def write_csv(rows: list[RunRow], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(RunRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def markdown_table(rows: list[RunRow]) -> str:
    """The report table; the reconstruction-score column only when some run has one."""
    columns = {k: v for k, v in COLUMNS_MD.items() if k != "recon. score" or any(r.reconstruction_score is not None for r in rows)}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for attr, fmt in columns.values():
            value = getattr(row, attr)
            cells.append("–" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Report:
    sweep_dir: Path
    rows: list[RunRow]
    csv: Path
    markdown: Path
    plots: dict[str, Path]


def _sweep_name(sweep_dir: Path) -> str:
    """The `sweep.name` recorded in Hydra's multirun.yaml, else the directory's name."""
    multirun = sweep_dir / "multirun.yaml"
    if multirun.exists():
        name = OmegaConf.select(OmegaConf.load(multirun), "sweep.name", default=None)
        if isinstance(name, str):
            return name
    return sweep_dir.name


def build_report(sweep_dir: str | Path) -> Report:
    """Write report.csv, report.md and report_plots/*.png into the sweep directory."""
    from sae.report_plots import write_plots

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    plots = write_plots(rows, sweep_dir, sweep_dir / "report_plots")
    csv_path = write_csv(rows, sweep_dir / "report.csv")
    done = sum(r.status == "finished" for r in rows)
    parts = [f"# Sweep report: {_sweep_name(sweep_dir)}", "", f"{done} of {len(rows)} runs finished. Directory: `{sweep_dir}`.", "",
             markdown_table(rows), ""]
    parts += [f"![{name}]({path.relative_to(sweep_dir)})\n" for name, path in plots.items()]
    md_path = sweep_dir / "report.md"
    md_path.write_text("\n".join(parts))
    return Report(sweep_dir, rows, csv_path, md_path, plots)


def log_to_wandb(report: Report, logger_cfg: dict) -> None:
    """One W&B run per report (job_type sweep-report) in the sweep's group: the table and the plots."""
    import wandb

    from sae.config import LoggerConfig
    from sae.run_logger import wandb_mode

    cfg = LoggerConfig(**{k: v for k, v in logger_cfg.items() if k in {f.name for f in fields(LoggerConfig)}})
    group = cfg.group or report.sweep_dir.name
    run = wandb.init(project=cfg.project, entity=cfg.entity, group=group, job_type="sweep-report", name=f"{group}-report",
                     dir=str(report.sweep_dir), mode=wandb_mode(cfg), reinit="create_new")
    columns = [f.name for f in fields(RunRow)]
    table = wandb.Table(columns=columns, data=[[getattr(r, c) for c in columns] for r in report.rows])
    run.log({"sweep/report": table, **{f"sweep/{name}": wandb.Image(str(p)) for name, p in report.plots.items()}})
    run.finish()


class SweepReport(Callback):
    """Hydra callback: writes the sweep report (and logs it to W&B when the runs use W&B) after a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.exists():
            return
        report = build_report(sweep_dir)
        print(f"sweep report: {report.markdown}")
        logger = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else {}
        if logger.get("kind") == "wandb":
            log_to_wandb(report, logger)


def _logger_cfg_of(sweep_dir: Path) -> dict:
    """The logger settings the sweep ran with, from Hydra's multirun.yaml (W&B defaults otherwise)."""
    multirun = sweep_dir / "multirun.yaml"
    if multirun.exists():
        from sae.config import register_configs

        register_configs()  # the resolvers its interpolations use
        cfg = OmegaConf.load(multirun)
        try:
            return OmegaConf.to_container(cfg.logger, resolve=True)
        except Exception:  # an interpolation that only resolves inside a job
            return {k: v for k, v in OmegaConf.to_container(cfg.logger, resolve=False).items() if k != "tags"}
    return {"kind": "wandb"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sae.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. multirun/smoke")
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B (the sweep's project and group)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"{args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    report = build_report(args.sweep_dir)
    if not report.rows:
        print(f"no runs found under {args.sweep_dir}", file=sys.stderr)
        return 1
    print(report.markdown.read_text())
    if args.wandb:
        log_to_wandb(report, _logger_cfg_of(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
