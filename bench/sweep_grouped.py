"""Wall time of the `lr_l1` sweep (12 SAEs) grouped (`sweep.grouped=true`: one job reads each batch once
and steps every SAE on it) against the same multirun ungrouped (one job after another), side by side.

    python bench/sweep_grouped.py                          # streamed and cached, 25,600 tokens per run
    python bench/sweep_grouped.py --tokens 102400 --modes streamed
    python bench/sweep_grouped.py --record docs/results/sweep_grouped.json   # also a stamped record for the docs

streamed: `activations.cache=false`, so ungrouped, every run harvests its activations from the model;
grouped, one harvest feeds all twelve. cached: every run reads one activation cache harvested before the
timing starts; grouped saves only start-up, reads, and what the group's final evaluations share (the
held-out activations, the zero-ablated model run). The runs are the default's (SmolLM2-135M, layer 6, 8x,
batch 512) at a reduced token budget, with their evaluation as in a real sweep, into temporary directories.
Prints `streamed ratio X` and `cached ratio X` (ungrouped / grouped wall time) and checks that both ways
trained the same SAEs and evaluated them the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import describe  # noqa: E402
from bench.record import add_record_option, write_record  # noqa: E402


def run_sweep(sweep_dir: Path, overrides: list[str]) -> float:
    """Seconds for `train.py --multirun +sweep=lr_l1 <overrides>`; raises if the sweep fails."""
    args = [sys.executable, str(REPO / "train.py"), "--multirun", "+sweep=lr_l1", "logger=csv", f"hydra.sweep.dir={sweep_dir}"]
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run([*args, *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return seconds


def same_saes(a: Path, b: Path) -> bool:
    runs = sorted(p.parent.parent.name for p in a.glob("*/sae/sae.safetensors"))
    if len(runs) != 12 or runs != sorted(p.parent.parent.name for p in b.glob("*/sae/sae.safetensors")):
        return False
    for run in runs:
        x, y = load_file(a / run / "sae" / "sae.safetensors"), load_file(b / run / "sae" / "sae.safetensors")
        if any(not torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def same_evaluations(a: Path, b: Path) -> bool:
    """Every run's end-of-training `eval/*` figures equal: sharing the zero-ablated run changes no result."""

    def evals(run: Path) -> dict:
        return {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k.startswith("eval/")}

    runs = sorted(p.parent.name for p in a.glob("*/summary.json"))
    return len(runs) == 12 and all(evals(a / run) and evals(a / run) == evals(b / run) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=25_600, help="training tokens per run (sae.tokens)")
    parser.add_argument("--modes", nargs="+", default=["streamed", "cached"], choices=["streamed", "cached"])
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    add_record_option(parser)
    args = parser.parse_args()
    machine = describe()
    print(machine)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-grouped-bench-") as tmp:
        tmp = Path(tmp)
        common = [f"sae.tokens={args.tokens}", f"activations.cache_dir={tmp / 'cache'}", *args.overrides]
        for mode in args.modes:
            if mode == "streamed":
                extra = ["activations.cache=false"]
            else:
                # The cache the twelve runs share, harvested before the clock starts.
                extra = [f"activations.n_tokens={args.tokens}"]
                run_sweep(tmp / "warm", [*common, *extra, "sae.lr=1e-4", "sae.l1_coefficient=1e-4", f"sae.tokens={512 * 2}"])
            ungrouped = run_sweep(tmp / f"{mode}-ungrouped", [*common, *extra])
            grouped = run_sweep(tmp / f"{mode}-grouped", [*common, *extra, "sweep.grouped=true"])
            same = same_saes(tmp / f"{mode}-ungrouped", tmp / f"{mode}-grouped")
            same_eval = same_evaluations(tmp / f"{mode}-ungrouped", tmp / f"{mode}-grouped")
            print(f"{mode}: 12 runs x {args.tokens:,} tokens: ungrouped {ungrouped:.1f} s, grouped {grouped:.1f} s")
            print(f"  the same 12 SAEs (bitwise): {same}; the same evaluations: {same_eval}")
            print(f"{mode} ratio {ungrouped / grouped:.2f}")
            rows.append(
                {
                    "activations": mode,
                    "runs": 12,
                    "tokens per run": args.tokens,
                    "ungrouped (s)": round(ungrouped, 1),
                    "grouped (s)": round(grouped, 1),
                    "ratio": round(ungrouped / grouped, 2),
                    "same SAEs (bitwise)": same,
                    "same evaluations": same_eval,
                }
            )
    if args.record:
        write_record(args.record, "lr_l1 sweep (12 SAEs): ungrouped vs sweep.grouped=true", rows, machine=machine)


if __name__ == "__main__":
    main()
