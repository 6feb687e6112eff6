"""Result records: rows of figures stamped with the command, commit, machine and date that produced them.

Every bench script takes `--record docs/results/NAME.json`; the documentation renders such a file as a table
under its stamp (docs/hooks/results_tables.py), so a figure in the docs always says where it came from.

    {"title": ..., "command": "python bench/...", "commit": "<sha>[-dirty]", "machine": describe(),
     "date": "2026-...Z", "rows": [{"column": value, ...}, ...], "notes": "..."}

Run as a script, it records the training runs of a `train.py` command (and, with --evaluate, what `evaluate.py`
measured of them: a multirun's runs in one `sweep_dir=` job, under one protocol), running the command itself so
that the stamp is the command's own:

    python bench/record.py docs/results/default_run.json -- train.py
    python bench/record.py docs/results/architectures.json -- train.py --multirun +sweep=architectures sweep.grouped=true
    python bench/record.py docs/results/seeds.json --evaluate "metrics.ce_tokens=16384" -- train.py --multirun +sweep=seeds
    python bench/record.py docs/results/lr_l1.json --evaluate "stage=all" -- train.py --multirun +sweep=lr_l1

The runs go to a fresh directory (--keep DIR keeps them) with a fresh activation cache, so the recorded wall
time includes the harvest, as on a new machine; --cache-dir DIR uses (and keeps) a cache directory instead,
and the record's note says whether its caches were harvested before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, the repository root is not on the path yet

from bench.machine import describe  # noqa: E402
from sae.core.files import atomic_write_json  # noqa: E402
from sae.sweeps.report import (  # noqa: E402
    build_report,
    mean_ci95,
    read_interp,
    run_identity,
    setting_key,
    unnamed_differences,
)


def add_record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record",
        type=Path,
        metavar="PATH",
        help="also write the results as a stamped record for the docs, e.g. docs/results/NAME.json",
    )


def command_line() -> str:
    """The command as typed from the repository root: `python bench/<script> <arguments>`."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its absolute path
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def commit() -> str:
    """The checked-out commit, with `-dirty` when tracked files differ from it (the figures are then not its own)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{sha}-dirty" if dirty else sha


def write_record(path: Path, title: str, rows: list[dict[str, Any]], notes: str = "", machine: str | None = None) -> Path:
    """Write the record atomically; rows are dicts with the same keys, in column order. `machine`: the line the
    script printed when it started (its load average is the one the figures were measured under)."""
    record = {
        "title": title,
        "command": command_line(),
        "commit": commit(),
        "machine": machine or describe(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows": rows,
    }
    if notes:
        record["notes"] = notes
    atomic_write_json(path, record)
    print(f"recorded {len(rows)} rows in {path}")
    return Path(path)


# summary.json / metrics.json key -> column, in table order; a key a run lacks is left empty.
RUN_COLUMNS = {
    "steps": "steps",
    "eval/l0": "held-out L0",
    "eval/explained_variance": "expl. var.",
    "eval/reconstruction_score": "recon. score",
    "eval/kl_score": "KL score",
    "eval/tokens": "score tokens",
    "density/dead_fraction": "dead %",
    "density/ultralow_fraction": "ultralow %",
    "resample/total_resampled": "resampled",
}
EVALUATE_COLUMNS = {
    "reconstruction_score": "recon. score (evaluate.py)",
    "kl_score": "KL score (evaluate.py)",
    "ce_tokens": "CE tokens (evaluate.py)",
    "l0": "held-out L0 (evaluate.py)",
    "explained_variance": "expl. var. (evaluate.py)",
}
# Shown only where the evaluation measured them (metrics.absorption_words > 0; stage=interp or all).
ABSORPTION_COLUMNS = {
    "absorption_absorption_fraction": "absorption %",
    "absorption_full_absorption_rate": "full absorption rate",
    "absorption_probe_f1": "letter probe F1",
}
INTERP_COLUMNS = {
    "interp": "interp.",
    "interp_ci_low": "interp. 95% low",
    "interp_ci_high": "interp. 95% high",
    "interp_control": "control",
}
# One run's own interval: a mean of its bounds over seeds would be neither run's interval nor the seeds'.
PER_RUN_INTERVAL = {"interp. 95% low", "interp. 95% high"}


def _figure(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if key.endswith("_fraction"):
        return round(100 * value, 3)
    if isinstance(value, int) or float(value).is_integer():
        return int(value)  # counts logged as floats (e.g. eval/tokens) read as counts
    return round(value, 4)


def run_row(run_dir: Path, evaluated: bool) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    row: dict[str, Any] = {"run": summary.get("run_name", run_dir.name)}
    row.update({column: _figure(key, summary.get(key)) for key, column in RUN_COLUMNS.items()})
    if evaluated:
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        row.update({column: _figure(key, metrics.get(key)) for key, column in EVALUATE_COLUMNS.items()})
        if "absorption_absorption_fraction" in metrics:
            row.update({column: _figure(key, metrics.get(key)) for key, column in ABSORPTION_COLUMNS.items()})
        interp = read_interp(run_dir)
        if interp:
            row.update({column: _figure(key, interp.get(key)) for key, column in INTERP_COLUMNS.items()})
    return row


CORPUS_COLUMNS = {
    "reconstruction_score": "recon. score",
    "kl_score": "KL score",
    "l0": "held-out L0",
    "explained_variance": "expl. var.",
    "ce_tokens": "CE tokens",
}


def corpus_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per evaluation corpus of a run (evaluate.py's eval/metrics_by_corpus.json), the training one first."""
    summary = json.loads((run_dir / "summary.json").read_text())
    corpora = json.loads((run_dir / "eval" / "metrics_by_corpus.json").read_text())["corpora"]
    return [
        {"run": summary.get("run_name", run_dir.name), "corpus": name}
        | {column: _figure(key, metrics.get(key)) for key, column in CORPUS_COLUMNS.items()}
        for name, metrics in corpora.items()
    ]


def with_differences(run_dirs: list[Path], rows: list[dict[str, Any]]) -> tuple[list[Path], list[dict[str, Any]]]:
    """Where runs of one name differ in settings the name does not show (the data, `sae.settings.*`), a
    `differs in` column after `run`, the rows grouped by it: otherwise those rows could not be told apart."""
    differences = unnamed_differences([run_identity(run_dir) for run_dir in run_dirs])
    if not any(differences):
        return run_dirs, rows
    labelled = [
        ({"run": row["run"], "differs in": differs} | row, run_dir)
        for run_dir, row, differs in zip(run_dirs, rows, differences, strict=True)
    ]
    labelled.sort(key=lambda pair: str(pair[0]["differs in"]))  # stable: a run's corpus rows stay in order
    return [run_dir for _, run_dir in labelled], [row for row, _ in labelled]


def seed_rows(run_dirs: list[Path], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting trained with several seeds (runs that differ only by `sae.seed`, as the sweep report groups
    them), and per evaluation corpus when rows have one: each figure's mean ± the half-width of its 95% Student-t
    interval over the seeds. `run_dirs[i]` is the run of `rows[i]`."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for run_dir, row in zip(run_dirs, rows, strict=True):
        groups.setdefault((setting_key(run_dir) or str(run_dir), row.get("corpus")), []).append(row)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        seeds = len(members)
        label = re.sub(r"_seed=\d+", "", members[0]["run"].rsplit("-", 1)[0])
        row: dict[str, Any] = {"run": f"{label}: mean ± 95% interval over {seeds} seeds"}
        for column in list(members[0])[1:]:
            values = [m[column] for m in members if isinstance(m[column], (int, float)) and not isinstance(m[column], bool)]
            if column in PER_RUN_INTERVAL:
                row[column] = None
                continue
            if len(values) < seeds:
                shared = {m[column] for m in members if isinstance(m[column], str)}
                row[column] = shared.pop() if len(shared) == 1 and len(values) == 0 else None  # e.g. the corpus
                continue
            mean, half = mean_ci95([float(v) for v in values])
            digits = 4 if abs(mean) < 10 else 1
            row[column] = f"{mean:.{digits}f} ± {half:.{digits}f}"
        out.append(row)
    return out


def correlation_notes(runs_dir: Path) -> str:
    """The sweep report's rank correlations of interpretability with the reconstruction score and L0, as prose."""
    names = {"reconstruction_score": "reconstruction score", "l0": "held-out L0"}
    parts = []
    for key, result in build_report(runs_dir).correlations.items():
        if result.get("spearman") is not None:
            low, high = result["ci95"]
            parts.append(
                f"Spearman rank correlation of interpretability with {names[key]} across {result['n']} settings: "
                f"{result['spearman']:.2f}, 95% bootstrap interval [{low:.2f}, {high:.2f}]."
            )
    return " ".join(parts)


def harvest_note(caches_before: int, caches_harvested: int) -> str:
    """Whether the recorded time includes harvesting activations: a cache directory kept from earlier records
    may hold some of the caches a command needs and not others."""
    if not caches_harvested:
        return "with activation caches harvested before"
    if not caches_before:
        return "from an empty activation cache"
    return f"harvesting {caches_harvested} of its activation caches (others were harvested before)"


def numbers_in_order(path: Path) -> list[str | int]:
    """A sort key that reads the numbers in a run's name as numbers, so that `k=8` comes before `k=64`."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", path.name))]


def record_runs(out: Path, command: list[str], evaluate: list[str], work: Path, cache_dir: Path | None = None) -> Path:
    """Run `python train.py ...` into `work`, evaluate its runs if asked, and record one row per run.
    `cache_dir`: an activation cache directory to use (and keep) rather than a fresh one in `work`."""
    multirun = "--multirun" in command or "-m" in command
    runs_dir = work / "runs"
    placement = [f"hydra.sweep.dir={runs_dir}" if multirun else f"hydra.run.dir={runs_dir / 'run'}"]
    cache_dir = cache_dir or work / "activations"
    caches_before = set(cache_dir.glob("*/meta.json"))
    placement.append(f"activations.cache_dir={cache_dir}")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    machine = describe()
    print(f"machine: {machine}\nrunning: python {shlex.join(command)}  (runs in {runs_dir})", flush=True)
    finished_before = {p.parent for p in runs_dir.rglob("summary.json")}  # a kept directory's earlier runs
    start = time.perf_counter()
    subprocess.run([sys.executable, *command, *placement], cwd=REPO, env=env, check=True)
    seconds = time.perf_counter() - start
    caches_harvested = len(set(cache_dir.glob("*/meta.json")) - caches_before)
    run_dirs = sorted((p.parent for p in runs_dir.rglob("summary.json")), key=numbers_in_order)
    if not run_dirs:
        raise SystemExit(f"python {shlex.join(command)} left no finished run (summary.json) under {runs_dir}.")
    start = time.perf_counter()
    if evaluate and multirun:  # one job under one protocol: the model loaded once, the same units sampled
        subprocess.run([sys.executable, "evaluate.py", f"sweep_dir={runs_dir}", *evaluate], cwd=REPO, env=env, check=True)
    for run_dir in run_dirs if evaluate and not multirun else []:
        subprocess.run([sys.executable, "evaluate.py", f"sae_path={run_dir}", *evaluate], cwd=REPO, env=env, check=True)
    evaluate_seconds = time.perf_counter() - start
    if any((run_dir / "eval" / "metrics_by_corpus.json").exists() for run_dir in run_dirs):  # eval_corpora=[...]
        per_corpus = [(run_dir, row) for run_dir in run_dirs for row in corpus_rows(run_dir)]
        row_dirs, rows = [d for d, _ in per_corpus], [row for _, row in per_corpus]
    else:
        row_dirs, rows = run_dirs, [run_row(run_dir, bool(evaluate)) for run_dir in run_dirs]
    row_dirs, rows = with_differences(row_dirs, rows)
    if multirun:
        rows += seed_rows(row_dirs, rows)
    title = f"{len(run_dirs)} run{'s' * (len(run_dirs) > 1)} of python {shlex.join(command)}"
    if evaluate:
        target = "in one job with python evaluate.py sweep_dir=<runs>" if multirun else "with python evaluate.py sae_path=<run>"
        title += f", evaluated {target} {shlex.join(evaluate)}"
    notes = f"The training command took {seconds / 60:.1f} min in all, {harvest_note(len(caches_before), caches_harvested)}."
    if reused := len(finished_before & set(run_dirs)):
        notes += f" {reused} of the {len(run_dirs)} runs had finished in {work} before it, so that time leaves them out."
    if evaluate:
        notes += f" The evaluation took {evaluate_seconds / 60:.1f} min."
    if multirun and any("interp." in row for row in rows):
        notes = f"{notes} {correlation_notes(runs_dir)}".strip()
    return write_record(out, title, rows, notes=notes, machine=machine)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Record the runs of a train.py command for the docs.",
        usage="python bench/record.py OUT [--evaluate OVERRIDES] [--keep DIR] -- train.py [overrides ...]",
    )
    parser.add_argument("out", type=Path, help="the record to write, e.g. docs/results/default_run.json")
    parser.add_argument("--evaluate", default="", help="also run evaluate.py on each run with these overrides")
    parser.add_argument("--keep", type=Path, help="train into this directory and keep it (default: a temporary one)")
    parser.add_argument("--cache-dir", type=Path, help="use this activation cache directory (default: a fresh one)")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command or Path(command[0]).name != "train.py":
        parser.error("give the training command after --, e.g. -- train.py --multirun +sweep=smoke")
    evaluate = shlex.split(args.evaluate)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        record_runs(args.out, command, evaluate, args.keep.resolve(), args.cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="record-runs-") as work:
        record_runs(args.out, command, evaluate, Path(work), args.cache_dir)


if __name__ == "__main__":
    main()
