"""Peak memory of the activation statistics of `evaluate.py` (L0, explained variance, densities, ...).

A random SAE (default 256x of d = 768, i.e. 196,608 features) is evaluated on random activations fed
in 8,192-row batches, as the density part of the metrics stage feeds the activation cache. The
statistics run in chunks whose [rows, n_features] activations fit `--budget-mb`; this prints the
peak RSS above what the SAE and the activations already take (the target is < 4 GB), and with
`--compare` the same evaluation with one chunk per batch (no budget), side by side.

    python bench/eval_memory.py                                   # 256x of d = 768 (~2.5 GB of inputs and weights)
    python bench/eval_memory.py --d-in 64 --expansion 4 --tokens 4096 --compare   # a quick check
    python bench/eval_memory.py --record docs/results/eval_memory.json   # also a stamped record for the docs

`--compare` at full size needs ~30 GB free (one 8,192-row batch's activations and the encoder's temporaries).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe  # noqa: E402  (bench/machine.py)

from bench.record import add_record_option, write_record  # noqa: E402
from sae.architectures import ARCHITECTURES, build_sae  # noqa: E402
from sae.evaluation.stats import activation_stats, rows_per_chunk  # noqa: E402

GB = 1e9


class PeakRSS:
    """Samples this process's resident memory every few milliseconds while in use."""

    def __init__(self, interval_s: float = 0.002):
        self.process, self.interval_s = psutil.Process(), interval_s
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.base


def measure(sae, acts: torch.Tensor, batch_rows: int, budget: int, device: str) -> tuple[int, int, float, dict]:
    """(peak extra RSS, peak extra GPU memory, seconds, result) of one evaluation pass."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    batches = (acts[i : i + batch_rows] for i in range(0, len(acts), batch_rows))
    with PeakRSS() as rss:
        start = time.perf_counter()
        stats = activation_stats(sae, batches, len(acts), memory_budget=budget)
        result = stats.result()
        seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() - gpu_base if device == "cuda" else 0
    return rss.extra, gpu, seconds, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--architecture", default="relu", choices=sorted(ARCHITECTURES))
    p.add_argument("--k", type=int, default=None, help="active latents, for the k-sparse architectures")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--expansion", type=int, default=256)
    p.add_argument("--tokens", type=int, default=32_768)
    p.add_argument("--batch-rows", type=int, default=8192)
    p.add_argument("--budget-mb", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--compare", action="store_true", help="also run with no budget (one chunk per batch)")
    p.add_argument("--limit-gb", type=float, default=4.0)
    add_record_option(p)
    args = p.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    n_features = args.d_in * args.expansion
    torch.manual_seed(0)
    sae = build_sae(args.architecture, args.d_in, n_features, k=args.k).to(device).eval()
    acts = torch.randn(args.tokens, args.d_in)
    budget = args.budget_mb * 2**20
    machine = describe()
    print(f"machine: {machine}; pid {os.getpid()}")
    print(
        f"{args.architecture} SAE {args.d_in} -> {n_features} features ({args.expansion}x) on {device}, "
        f"{args.tokens:,} tokens in "
        f"{args.batch_rows:,}-row batches; budget {args.budget_mb} MB = {rows_per_chunk(n_features, budget)} rows per chunk"
    )
    print(
        f"unchunked float64 path (before): ~{args.batch_rows * n_features * 8 * 2 / GB:.1f} GB for one batch's two "
        f"float64 copies of the feature activations (estimate)"
    )

    runs = [("budget", budget)] + ([("no budget", 2**62)] if args.compare else [])
    extras, rows = {}, []
    for name, b in runs:
        extra, gpu, seconds, result = measure(sae, acts, args.batch_rows, b, device)
        extras[name] = extra
        rows.append(
            {
                "memory budget": f"{args.budget_mb} MB" if name == "budget" else "none (one chunk per batch)",
                "peak extra RSS (GB)": round(extra / GB, 2),
                **({"peak extra GPU memory (GB)": round(gpu / GB, 2)} if device == "cuda" else {}),
                "seconds": round(seconds, 1),
                "L0": round(result["l0"], 1),
                "explained variance": round(result["explained_variance"], 4),
            }
        )
        gpu_text = f", peak extra GPU memory {gpu / GB:.2f} GB" if device == "cuda" else ""
        print(
            f"{name:>9}: peak extra RSS {extra / GB:.2f} GB{gpu_text}, {seconds:.1f} s, L0 {result['l0']:.1f}, "
            f"explained variance {result['explained_variance']:.4f}"
        )
    if args.compare:
        print(f"ratio no budget / budget (peak extra RSS): {extras['no budget'] / max(extras['budget'], 1):.1f}x")
    ok = extras["budget"] < args.limit_gb * GB
    if args.record:
        title = (
            f"activation statistics of a random {args.architecture} SAE {args.d_in} -> {n_features:,} on {device}, "
            f"{args.tokens:,} random tokens in {args.batch_rows:,}-row batches (target: < {args.limit_gb} GB extra)"
        )
        write_record(args.record, title, rows, machine=machine)
    print(f"{'PASS' if ok else 'FAIL'}: peak extra RSS {extras['budget'] / GB:.2f} GB {'<' if ok else '>='} {args.limit_gb} GB")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
