"""DDP scaling of one SAE's training: tokens/s with 1 process and with N (Lightning's DDP strategy, the project's
training module, batches and fire-count reduction), side by side in one run, and the ratios.

    python bench/ddp_scaling.py                        # CPU: 1 process x all cores vs 2 processes x half each
    python bench/ddp_scaling.py --processes 1 2 4      # on a machine with 4 GPUs: 1, 2 and 4 GPUs

On a CPU the processes split the machine's cores (gloo); with GPUs each process has its own (NCCL). The global
batch is the same in every configuration (each of N processes gets 1/N of it), so the same optimisation runs
and tokens/s compare directly; the final weights are checked against the one-process run's. Activations are
synthetic (timing only), held in memory, so the measure is training alone: forward, backward, the gradient
all-reduce, the per-step fire-count all-reduce and Adam. Steady state: the clock starts after `--warmup` steps.
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

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from bench.record import add_record_option, write_record  # noqa: E402
from sae.activations.batches import CachedBatches, Shard  # noqa: E402
from sae.activations.cache import InMemoryActivations  # noqa: E402
from sae.architectures import build_sae  # noqa: E402
from sae.training.cluster import TorchThreads, leave_process_group, strategy  # noqa: E402
from sae.training.config import ResampleConfig, SAEConfig  # noqa: E402
from sae.training.module import SAETrainingModule  # noqa: E402


class Data(L.LightningDataModule):
    def __init__(self, cache: InMemoryActivations, batch_size: int, steps: int):
        super().__init__()
        self.cache, self.batch_size, self.steps = cache, batch_size, steps

    def train_dataloader(self):
        shard = Shard(self.trainer.global_rank, self.trainer.world_size)
        return CachedBatches(self.cache, self.batch_size, self.steps, seed=0, shard=shard)


class Clock(L.Callback):
    """Seconds from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step in (self.warmup, trainer.max_steps) and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        if trainer.global_step == trainer.max_steps:
            self.seconds = time.perf_counter() - self.start


def worker(args: argparse.Namespace) -> None:
    """One configuration: `--processes N` DDP processes (this script again, started by Lightning)."""
    (processes,) = args.processes
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(threads)
    cfg = SAEConfig(
        expansion=args.expansion,
        batch_size=args.batch_size,
        tokens=args.batch_size * args.steps,
        lr=1e-4,
        l1_coefficient=3e-4,
        sparse_kernel=args.kernel,
        resample=ResampleConfig(enabled=False),
    )
    data = torch.randn(args.cache_tokens, args.d, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    module = SAETrainingModule(build_sae("relu", args.d, args.d * args.expansion), cfg, log_every_n_steps=10**9)
    clock = Clock(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=processes,
        strategy=strategy(processes),
        use_distributed_sampler=False,
        max_steps=args.steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock, TorchThreads(threads)],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=Data(InMemoryActivations(data), args.batch_size, args.steps))
    leave_process_group()
    if trainer.is_global_zero:
        tokens = (args.steps - args.warmup) * args.batch_size
        weights = {k: v.detach().cpu() for k, v in module.sae.state_dict().items()}
        torch.save(weights, Path(args.out) / "weights.pt")
        record = {"tokens_per_s": tokens / clock.seconds, "threads": threads, "device": str(trainer.strategy.root_device)}
        (Path(args.out) / "result.json").write_text(json.dumps(record))


def run(args: argparse.Namespace, processes: int, out: Path) -> dict:
    out.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--processes", str(processes), "--out", str(out)]
    for name in ("d", "expansion", "batch_size", "steps", "warmup", "cache_tokens", "accelerator", "kernel", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{proc.stderr[-4000:]}")
    return {**json.loads((out / "result.json").read_text()), "weights": torch.load(out / "weights.pt")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpus = torch.cuda.device_count()
    ap.add_argument("--processes", type=int, nargs="+", default=[1, gpus] if gpus > 1 else [1, 2])
    ap.add_argument("--accelerator", default="gpu" if gpus else "cpu")
    ap.add_argument("--d", type=int, default=576, help="input width (SmolLM2-135M's residual stream)")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4096, help="global batch, split between the processes")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache-tokens", type=int, default=32_768)
    ap.add_argument("--kernel", default="auto", choices=["auto", "dense", "sparse"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process; 0: the CPUs split between them")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    add_record_option(ap)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    machine = describe()
    print(machine)
    print(
        f"SAE {args.d}x{args.d * args.expansion} ({args.expansion}x), global batch {args.batch_size}, "
        f"{args.steps - args.warmup} timed steps after {args.warmup}, float32, kernel {args.kernel}, on {args.accelerator}"
    )
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        results = {n: run(args, n, Path(tmp) / f"p{n}") for n in args.processes}
    base = results[args.processes[0]]
    rows = []
    for n, r in results.items():
        diff = max((r["weights"][k].double() - base["weights"][k].double()).abs().max().item() for k in base["weights"])
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        print(
            f"{n} process{'es' if n > 1 else '  '} x {r['threads']} threads on {r['device']:8s}: "
            f"{r['tokens_per_s']:10,.0f} tokens/s  ratio {ratio:.2f}  (weights vs {args.processes[0]}: max |diff| {diff:.1e})"
        )
        rows.append(
            {
                "processes": n,
                "threads each": r["threads"],
                "device": r["device"],
                "tokens/s": round(r["tokens_per_s"]),
                f"ratio to {args.processes[0]}": round(ratio, 2),
                "max weight difference": f"{diff:.1e}",
            }
        )
    if args.record:
        title = f"DDP scaling: SAE {args.d}x{args.d * args.expansion}, global batch {args.batch_size:,}, on {args.accelerator}"
        write_record(args.record, title, rows, machine=machine)


if __name__ == "__main__":
    main()
