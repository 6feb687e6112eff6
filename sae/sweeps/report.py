"""Sweep report: one table and a few plots that compare every run of a sweep directory.

    python -m sae.sweeps.report multirun/smoke            # report.csv, report.md and plots/ in that directory
    python -m sae.sweeps.report multirun/smoke --wandb    # ... and log them to W&B (group = the sweep)

Runs that differ only by `sae.seed` form one setting: the report gives each setting's mean and
95% interval (Student t over seeds) in both tables and as error bars on the plots.

Each metric is read from the first of its sources (`METRIC_SOURCES`) that the run has: the evaluation's
`eval/metrics.json` (evaluate.py: held-out text, e.g. 16,384 tokens for the reconstruction score), else
the run's own `summary.json` (the held-out figures computed when training ended, `eval/*`, else the last
training batch's); `report.csv` names the source of every value and `report.md` counts them.
Interpretability (`eval/interp_summary.json`, evaluate.py stage=interp or sweep_dir=...): the mean
Spearman score of the features over the primary split, its 95% bootstrap interval over features, and the
wrong-explanation control. The report plots it against the reconstruction score and L0, and states the
rank correlation between reconstruction score and interpretability across settings with a bootstrap
95% interval (resampling settings): is the reconstruction score a proxy for interpretability?

It reads what the runs left on disk (`summary.json`, `eval/`, `.hydra/config.yaml`, `plots/density.png`),
so it works on any sweep directory, finished or not: runs without a summary are listed as unfinished.
`SweepReport` is the Hydra callback (see `hydra.callbacks` in conf/train.yaml) that writes the same
report when a `--multirun` ends.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from sae.core.checks import config_from_dict
from sae.core.tracking import LoggerConfig, build_logger, finish, log_results
from sae.sweeps.report_plots import write_plots
from sae.training.config import register_configs
from sae.training.identity import RUN_CONFIG, identity_hash, number, run_label, training_identity

COLUMNS_MD = {  # report.md column -> (row field, format string or function)
    "run": ("run", "{}"),
    "expansion": ("expansion", "{}x"),
    "L1": ("l1_coefficient", number),  # exact: 2.5e-4 and 3.5e-4 stay apart
    "lr": ("lr", number),
    "tokens": ("tokens", "{:,}"),
    "seed": ("seed", "{}"),
    "differs in": ("differs_in", "{}"),
    "L0": ("l0", "{:.1f}"),
    "recon. score": ("reconstruction_score", "{:.3f}"),
    "KL score": ("kl_score", "{:.3f}"),
    "expl. var.": ("explained_variance", "{:.3f}"),
    "dead %": ("dead_pct", "{:.1f}"),
    "ultralow %": ("ultralow_pct", "{:.1f}"),
    "absorption": ("absorption", "{:.3f}"),
    "interp. [95%]": ("interp_cell", "{}"),
    "control": ("interp_control", "{:.3f}"),
    "status": ("status", "{}"),
}
# Shown when some run has a value.
OPTIONAL_MD = ("differs in", "recon. score", "KL score", "absorption", "interp. [95%]", "control")

EVAL_METRICS = "eval/metrics.json"
SUMMARY = "summary.json"
INTERP_SUMMARY = "eval/interp_summary.json"
# Row field -> (file, key) in order of preference: the evaluation's held-out figures first, then the run's own.
METRIC_SOURCES: dict[str, list[tuple[str, str]]] = {
    "l0": [(EVAL_METRICS, "l0"), (SUMMARY, "eval/l0"), (SUMMARY, "train/l0")],
    "reconstruction_score": [(EVAL_METRICS, "reconstruction_score"), (SUMMARY, "eval/reconstruction_score")],
    "kl_score": [(EVAL_METRICS, "kl_score"), (SUMMARY, "eval/kl_score")],
    "explained_variance": [
        (EVAL_METRICS, "explained_variance"),
        (SUMMARY, "eval/explained_variance"),
        (SUMMARY, "train/explained_variance"),
    ],
    "dead_pct": [(EVAL_METRICS, "dead_fraction"), (SUMMARY, "density/dead_fraction")],
    "ultralow_pct": [(EVAL_METRICS, "ultralow_fraction"), (SUMMARY, "density/ultralow_fraction")],
    "absorption": [(EVAL_METRICS, "absorption_absorption_fraction")],
}
PERCENT = ("dead_pct", "ultralow_pct")  # read as fractions


@dataclass
class RunRow:
    """Final metrics of one run; None where the run did not (yet) produce the value."""

    run: str
    path: str  # relative to the sweep directory
    status: str  # "finished" | "unfinished"
    recipe: Optional[str] = None
    architecture: Optional[str] = None
    expansion: Optional[int] = None
    k: Optional[int] = None
    l1_coefficient: Optional[float] = None
    lr: Optional[float] = None
    tokens: Optional[int] = None  # the training budget (sae.tokens)
    seed: Optional[int] = None
    # Settings the run name does not show, where runs of the same name differ in them: "key=value, ...".
    differs_in: Optional[str] = None
    setting: Optional[str] = None  # hash of the training config without the seed: same setting, other seed
    steps: Optional[int] = None
    l0: Optional[float] = None
    reconstruction_score: Optional[float] = None
    kl_score: Optional[float] = None
    explained_variance: Optional[float] = None
    dead_pct: Optional[float] = None
    ultralow_pct: Optional[float] = None
    absorption: Optional[float] = None  # first-letter absorption fraction (evaluate.py metrics.absorption_words)
    # Interpretability (eval/interp_summary.json): mean Spearman over features (primary split), its 95%
    # bootstrap interval over features, and the same features scored with other features' explanations.
    interp: Optional[float] = None
    interp_ci_low: Optional[float] = None
    interp_ci_high: Optional[float] = None
    interp_control: Optional[float] = None
    interp_n_units: Optional[int] = None
    interp_method: Optional[str] = None
    interp_split: Optional[str] = None
    # Where each metric was read: "<file>:<key>" (METRIC_SOURCES).
    l0_source: Optional[str] = None
    reconstruction_score_source: Optional[str] = None
    kl_score_source: Optional[str] = None
    explained_variance_source: Optional[str] = None
    dead_pct_source: Optional[str] = None
    ultralow_pct_source: Optional[str] = None
    absorption_source: Optional[str] = None
    # The run's setting over its finished seeds: count, mean and 95% interval half-width per metric.
    n_seeds: Optional[int] = None
    l0_mean: Optional[float] = None
    l0_ci95: Optional[float] = None
    reconstruction_score_mean: Optional[float] = None
    reconstruction_score_ci95: Optional[float] = None
    kl_score_mean: Optional[float] = None
    kl_score_ci95: Optional[float] = None
    explained_variance_mean: Optional[float] = None
    explained_variance_ci95: Optional[float] = None
    dead_pct_mean: Optional[float] = None
    dead_pct_ci95: Optional[float] = None
    absorption_mean: Optional[float] = None
    absorption_ci95: Optional[float] = None
    interp_mean: Optional[float] = None
    interp_ci95: Optional[float] = None
    interp_control_mean: Optional[float] = None
    interp_control_ci95: Optional[float] = None

    @property
    def interp_cell(self) -> Optional[str]:
        if self.interp is None:
            return None
        if self.interp_ci_low is None or self.interp_ci_high is None:
            return f"{self.interp:.3f}"
        return f"{self.interp:.3f} [{self.interp_ci_low:.2f}, {self.interp_ci_high:.2f}]"

    @property
    def family(self) -> str:
        """What one curve of the frontier plot holds: the configuration (two recipes may share an architecture)."""
        return str(self.recipe or self.architecture or "sae")


AGGREGATED = (
    "l0",
    "reconstruction_score",
    "kl_score",
    "explained_variance",
    "dead_pct",
    "absorption",
    "interp",
    "interp_control",
)


@dataclass
class Setting:
    """Runs that differ only by seed, aggregated: mean and 95% interval half-width (None for one seed)."""

    setting: str
    label: str
    members: list[RunRow]
    mean: dict[str, Optional[float]]
    ci95: dict[str, Optional[float]]

    @property
    def n(self) -> int:
        return len(self.members)

    def __getattr__(self, name: str) -> Any:  # expansion, tokens, l1_coefficient, lr, family: the members' own
        if name.startswith("__") or name in ("members", "mean", "ci95"):
            raise AttributeError(name)
        return getattr(self.members[0], name)


def mean_ci95(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and the half-width of its 95% Student-t interval (None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def aggregate(rows: list[RunRow]) -> list[Setting]:
    """One `Setting` per distinct training config without the seed, over its finished runs; fills each row's
    n_seeds / *_mean / *_ci95."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        if row.status == "finished":
            groups.setdefault(row.setting or row.path, []).append(row)
    settings = []
    for key, members in groups.items():
        mean, ci = {}, {}
        for metric in AGGREGATED:
            values = [getattr(r, metric) for r in members if getattr(r, metric) is not None]
            mean[metric], ci[metric] = mean_ci95(values) if values else (None, None)
        label = members[0].run.rsplit("-", 1)[0].replace(f"_seed={members[0].seed}", "")
        label += f" ({members[0].differs_in})" if members[0].differs_in else ""
        settings.append(Setting(key, label, members, mean, ci))
        for r in members:
            r.n_seeds = len(members)
            for metric in AGGREGATED:
                setattr(r, f"{metric}_mean", mean[metric])
                setattr(r, f"{metric}_ci95", ci[metric])
    return settings


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under the sweep: one with Hydra's `.hydra/` record or a `summary.json`."""
    skip = {".submitit", ".groups", "wandb", "plots", "checkpoints", "sae", "eval"}  # eval/: evaluate.py's records
    found = {p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")}
    found |= {p.parent for p in sweep_dir.rglob("summary.json")}
    return sorted(d for d in found if d != sweep_dir and not skip & set(d.relative_to(sweep_dir).parts))


def run_identity(run_dir: Path, cfg: Optional[dict] = None) -> Optional[dict]:
    """The training identity the run recorded (run_config.json), else one rebuilt from its resolved config."""
    record = run_dir / RUN_CONFIG
    identity = json.loads(record.read_text()).get("identity") if record.exists() else None
    if identity is None and (run_dir / "sae" / "cfg.json").exists():
        resolved = _run_config(run_dir) if cfg is None else cfg
        identity = json.loads(json.dumps(training_identity(resolved), default=str))
    return identity or None


def _flat(node: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def unnamed_differences(identities: list[Optional[dict]]) -> list[Optional[str]]:
    """Per run, the settings in which it differs from runs of the same readable name (`run_label`), as
    "key=value, ..."; None where no such setting. A run name carries the usual knobs only, so runs of a sweep over
    the data or `sae.settings.*` would share a name, and tables could not tell them apart without this."""
    flats = [_flat(identity) if identity else {} for identity in identities]
    labels = [run_label(identity.get("sae", {})) if identity else None for identity in identities]
    differing: dict[str, list[str]] = {}
    for label in {label for label in labels if label is not None}:
        members = [flat for flat, other in zip(flats, labels, strict=True) if other == label]
        keys = set().union(*members)
        differing[label] = sorted(k for k in keys if len({json.dumps(m.get(k), default=str) for m in members}) > 1)
    return [
        ", ".join(f"{key}={number(flat.get(key))}" for key in differing[label]) or None if label is not None else None
        for flat, label in zip(flats, labels, strict=True)
    ]


def _setting_of(run_dir: Path, cfg: dict) -> Optional[str]:
    """Hash of the run's training identity without its seed (run_config.json, else the resolved config)."""
    identity = run_identity(run_dir, cfg)
    if not identity:
        return None
    identity = {**identity, "sae": {k: v for k, v in identity.get("sae", {}).items() if k != "seed"}}
    return identity_hash(identity)


def setting_key(run_dir: Path) -> Optional[str]:
    """The setting a run belongs to: the hash of its training config without the seed."""
    return _setting_of(run_dir, _run_config(run_dir))


def _run_config(run_dir: Path) -> dict:
    """The run's training config: resolved from sae/cfg.json when finished, else Hydra's record."""
    cfg_json = run_dir / "sae" / "cfg.json"
    if cfg_json.exists():
        return json.loads(cfg_json.read_text()).get("train_config", {})
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.exists():  # unresolved: only plain values are read from it
        return OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False)
    return {}


def read_metric(files: dict[str, dict], field: str) -> tuple[Optional[float], Optional[str]]:
    """`field`'s value from the first of its METRIC_SOURCES present, and that source as "<file>:<key>"."""
    for file, key in METRIC_SOURCES[field]:
        value = files.get(file, {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return (100.0 * value if field in PERCENT else float(value)), f"{file}:{key}"
    return None, None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def read_interp(run_dir: Path) -> dict[str, Any]:
    """The interpretability fields of a run's row, from eval/interp_summary.json (features); {} without one."""
    summary = _read_json(run_dir / INTERP_SUMMARY).get("features")
    if not isinstance(summary, dict) or not isinstance(summary.get("spearman"), dict):
        return {}
    own, control = summary["spearman"], summary.get("control_spearman") or {}
    ci = own.get("ci95") or [None, None]
    return {
        "interp": own.get("mean"),
        "interp_ci_low": ci[0],
        "interp_ci_high": ci[1],
        "interp_control": control.get("mean"),
        "interp_n_units": own.get("n_units"),
        "interp_method": summary.get("primary_method"),
        "interp_split": summary.get("split"),
    }


def _plain(value: Any, kind: type) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):  # missing, or an unresolved interpolation
        return None


def read_run(run_dir: Path, sweep_dir: Path) -> RunRow:
    cfg = _run_config(run_dir)
    sae = cfg.get("sae", {}) if isinstance(cfg.get("sae"), dict) else {}
    summary = _read_json(run_dir / SUMMARY)
    finished = bool(summary) and (run_dir / "sae" / "sae.safetensors").exists()
    files = {SUMMARY: summary, EVAL_METRICS: _read_json(run_dir / EVAL_METRICS)}
    metrics = {}
    for field in METRIC_SOURCES:
        metrics[field], metrics[f"{field}_source"] = read_metric(files, field)
    return RunRow(
        run=str(summary.get("run_name") or run_dir.name),
        path=str(run_dir.relative_to(sweep_dir)),
        status="finished" if finished else "unfinished",
        recipe=sae.get("recipe"),
        architecture=sae.get("architecture"),
        expansion=_plain(sae.get("expansion"), int),
        k=_plain(sae.get("k"), int),
        l1_coefficient=_plain(sae.get("l1_coefficient"), float),
        lr=_plain(sae.get("lr"), float),
        tokens=_plain(sae.get("tokens"), int),
        seed=_plain(sae.get("seed"), int),
        setting=_setting_of(run_dir, cfg),
        steps=_plain(summary.get("steps"), int),
        **metrics,
        **read_interp(run_dir),
    )


def collect(sweep_dir: str | Path) -> list[RunRow]:
    """Every run's row, with its setting's across-seed aggregates filled in."""
    sweep_dir = Path(sweep_dir)
    run_dirs = find_run_dirs(sweep_dir)
    rows = [read_run(d, sweep_dir) for d in run_dirs]
    for row, differs_in in zip(rows, unnamed_differences([run_identity(d) for d in run_dirs]), strict=True):
        row.differs_in = differs_in
    aggregate(rows)
    return rows


def write_csv(rows: list[RunRow], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(RunRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def markdown_table(rows: list[RunRow]) -> str:
    """The report table; the score and interpretability columns only when some run has them."""
    columns = {k: v for k, v in COLUMNS_MD.items() if k not in OPTIONAL_MD or any(getattr(r, v[0]) is not None for r in rows)}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for attr, fmt in columns.values():
            value = getattr(row, attr)
            cells.append("–" if value is None else fmt(value) if callable(fmt) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(settings: list[Setting]) -> str:
    """Mean ± 95% interval per setting, for the settings trained with more than one seed."""
    multi = [s for s in settings if s.n > 1]
    if not multi:
        return ""

    def cell(s: Setting, metric: str, fmt: str) -> str:
        if s.mean[metric] is None:
            return "–"
        return fmt.format(s.mean[metric]) + ("" if s.ci95[metric] is None else " ± " + fmt.format(s.ci95[metric]))

    extra = [(name, key) for name, key in SEED_EXTRA if any(s.mean[key] is not None for s in multi)]
    header = ["setting", "seeds", "L0", "recon. score", "expl. var.", "dead %", *(name for name, _ in extra)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in sorted(multi, key=lambda s: s.label):
        seeds = ",".join(str(r.seed) for r in sorted(s.members, key=lambda r: r.seed if r.seed is not None else -1))
        more = "".join(f" {cell(s, key, '{:.3f}')} |" for _, key in extra)
        lines.append(
            f"| {s.label} | {seeds} | {cell(s, 'l0', '{:.1f}')} | {cell(s, 'reconstruction_score', '{:.3f}')} | "
            f"{cell(s, 'explained_variance', '{:.3f}')} | {cell(s, 'dead_pct', '{:.1f}')} |{more}"
        )
    return "\n".join(lines)


SEED_EXTRA = (("KL score", "kl_score"), ("absorption", "absorption"), ("interp.", "interp"), ("control", "interp_control"))


def rank_correlation(x: list[float], y: list[float], n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Spearman's rank correlation of paired values, with a percentile bootstrap 95% interval that resamples
    the pairs (resamples whose x or y are all tied are left out). None where fewer than 3 pairs."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"spearman": None, "ci95": [None, None], "n": n, "resamples": 0}
    rho = float(stats.spearmanr(xa, ya).statistic)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    rx, ry = stats.rankdata(xa[idx], axis=1), stats.rankdata(ya[idx], axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    ok = denom > 0
    boot = (rx * ry).sum(axis=1)[ok] / denom[ok]
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    return {"spearman": rho, "ci95": [float(low), float(high)], "n": n, "resamples": int(ok.sum())}


def interp_correlations(settings: list[Setting]) -> dict[str, dict[str, Any]]:
    """Across settings (seeds averaged): rank correlation of interpretability with the reconstruction score and
    with L0."""
    out = {}
    for key in ("reconstruction_score", "l0"):
        pairs = [(s.mean[key], s.mean["interp"]) for s in settings if s.mean[key] is not None and s.mean["interp"] is not None]
        out[key] = rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])
    return out


def interp_section(rows: list[RunRow], settings: list[Setting]) -> list[str]:
    """report.md's interpretability section: the protocol read, and the rank correlations."""
    scored = [r for r in rows if r.interp is not None]
    if not scored:
        return []
    methods = sorted({f"{r.interp_method}, split {r.interp_split}" for r in scored})
    parts = [
        "## Interpretability",
        "",
        f"{len(scored)} runs scored (`{INTERP_SUMMARY}`: {'; '.join(methods)}). Interpretability = mean Spearman "
        "correlation of simulated with true activations over the scored features, with its 95% bootstrap interval "
        "over features; control = the same features scored with other features' explanations.",
        "",
    ]
    names = {"reconstruction_score": "reconstruction score", "l0": "L0"}
    for key, result in interp_correlations(settings).items():
        if result["spearman"] is None:
            parts.append(f"- Rank correlation of {names[key]} and interpretability: too few settings ({result['n']}; needs 3).")
        else:
            low, high = result["ci95"]
            parts.append(
                f"- Rank correlation (Spearman) of {names[key]} and interpretability across {result['n']} settings: "
                f"**{result['spearman']:.2f}**, 95% bootstrap interval [{low:.2f}, {high:.2f}] "
                f"({result['resamples']:,} resamples of the settings)."
            )
    return [*parts, ""]


def sources_section(rows: list[RunRow]) -> list[str]:
    """Which file and key each column was read from, with how many runs each."""
    lines = ["## Sources", ""]
    for field in METRIC_SOURCES:
        counts: dict[str, int] = {}
        for r in rows:
            source = getattr(r, f"{field}_source")
            if source:
                counts[source] = counts.get(source, 0) + 1
        if counts:
            lines.append(f"- {field}: " + ", ".join(f"`{src}` ({n} runs)" for src, n in sorted(counts.items())))
    return [*lines, ""] if len(lines) > 2 else []


@dataclass
class Report:
    sweep_dir: Path
    rows: list[RunRow]
    csv: Path
    markdown: Path
    plots: dict[str, Path]
    correlations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # interp_correlations


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
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    settings = aggregate(rows)
    plots = write_plots(rows, settings, sweep_dir, sweep_dir / "report_plots")
    csv_path = write_csv(rows, sweep_dir / "report.csv")
    done = sum(r.status == "finished" for r in rows)
    parts = [
        f"# Sweep report: {_sweep_name(sweep_dir)}",
        "",
        f"{done} of {len(rows)} runs finished. Directory: `{sweep_dir}`.",
        "",
        markdown_table(rows),
        "",
    ]
    across = seeds_table(settings)
    if across:
        parts += [
            "## Across seeds",
            "",
            "Mean ± half-width of the 95% interval (Student t) over the seeds of each setting "
            "(runs that differ only by `sae.seed`).",
            "",
            across,
            "",
        ]
    parts += interp_section(rows, settings)
    parts += sources_section(rows)
    parts += [f"![{name}]({path.relative_to(sweep_dir)})\n" for name, path in plots.items()]
    md_path = sweep_dir / "report.md"
    md_path.write_text("\n".join(parts))
    return Report(sweep_dir, rows, csv_path, md_path, plots, interp_correlations(settings))


def log_to_wandb(report: Report, logger_cfg: dict) -> None:
    """One W&B run per sweep directory (job_type sweep-report) in the sweep's group: the table and the plots."""
    cfg = config_from_dict(LoggerConfig, logger_cfg)
    cfg = dataclasses.replace(cfg, group=cfg.group or report.sweep_dir.name)
    logger = build_logger(cfg, report.sweep_dir, f"{cfg.group}-report", {}, job_type="sweep-report")
    columns = [f.name for f in fields(RunRow)]
    table = (columns, [[getattr(r, c) for c in columns] for r in report.rows])
    log_results(logger, {}, images={f"sweep/{name}": p for name, p in report.plots.items()}, tables={"sweep/report": table})
    finish(logger)


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
        register_configs()  # the resolvers its interpolations use
        cfg = OmegaConf.load(multirun)
        try:
            return OmegaConf.to_container(cfg.logger, resolve=True)
        except Exception:  # an interpolation that only resolves inside a job
            return {k: v for k, v in OmegaConf.to_container(cfg.logger, resolve=False).items() if k != "tags"}
    return {"kind": "wandb"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sae.sweeps.report", description=__doc__.split("\n\n")[0])
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
