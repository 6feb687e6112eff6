"""Wall time of the `smoke` sweep (4 SAEs) with one shared activation harvest vs one harvest per run.

    python bench/sweep_cache.py                     # runs both sweeps, one after the other (~5-10 min on 2 cores)
    python bench/sweep_cache.py --launcher local    # jobs as parallel processes (hydra-submitit-launcher)
    python bench/sweep_cache.py --record docs/results/sweep_cache.json   # also a stamped record for the docs

Shared: every run uses one `activations.cache_dir`, so the first job harvests and the rest read it.
Per run: `activations.cache_dir=<dir>/${hydra:job.num}` gives each job its own cache, so each harvests.
Both sweeps start from empty caches and write to temporary directories; the repo's multirun/ is untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import describe  # noqa: E402
from bench.record import add_record_option, write_record  # noqa: E402


def run_sweep(workdir: Path, cache_dir: str, launcher: str, extra: list[str]) -> float:
    """Seconds for `train.py --multirun +sweep=smoke` into workdir/sweep; raises if the sweep fails."""
    args = [
        sys.executable,
        str(REPO / "train.py"),
        "--multirun",
        "+sweep=smoke",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={workdir / 'sweep'}",
        f"activations.cache_dir={cache_dir}",
        "logger=csv",
        *extra,
    ]
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return seconds


def harvests(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("meta.json")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", default="basic", help="hydra/launcher: basic (sequential) or local (parallel processes)")
    parser.add_argument("--keep", type=Path, help="copy the shared-cache sweep (runs + report) to this directory")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. activations.n_tokens=50000")
    add_record_option(parser)
    args = parser.parse_args()
    machine = describe()
    print(machine)
    with tempfile.TemporaryDirectory(prefix="sweep-cache-bench-") as tmp:
        tmp = Path(tmp)
        shared = run_sweep(tmp / "shared", str(tmp / "shared" / "cache"), args.launcher, args.overrides)
        per_run = run_sweep(tmp / "per_run", str(tmp / "per_run" / "cache") + "/${hydra:job.num}", args.launcher, args.overrides)
        h_shared, h_per_run = harvests(tmp / "shared" / "cache"), harvests(tmp / "per_run" / "cache")
        if args.keep:
            shutil.copytree(tmp / "shared" / "sweep", args.keep, dirs_exist_ok=True)
    print(f"smoke sweep (4 runs, launcher={args.launcher}, {os.cpu_count()} CPUs)")
    print(
        f"  shared cache  : {shared:7.1f} s  ({len(h_shared)} harvest,  "
        f"{sum(h['harvest_seconds'] for h in h_shared):.1f} s harvesting)"
    )
    print(
        f"  cache per run : {per_run:7.1f} s  ({len(h_per_run)} harvests, "
        f"{sum(h['harvest_seconds'] for h in h_per_run):.1f} s harvesting)"
    )
    print(f"  ratio per-run / shared = {per_run / shared:.2f}x")
    if args.record:
        rows = [
            {
                "cache": name,
                "wall time (s)": round(seconds, 1),
                "harvests": len(h),
                "time harvesting (s)": round(sum(x["harvest_seconds"] for x in h), 1),
                "wall time / shared": round(seconds / shared, 2),
            }
            for name, seconds, h in (("shared", shared, h_shared), ("one per run", per_run, h_per_run))
        ]
        title = f"smoke sweep (4 runs, launcher {args.launcher}): one shared activation cache vs one cache per run"
        write_record(args.record, title, rows, machine=machine)


if __name__ == "__main__":
    main()
