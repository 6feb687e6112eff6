"""Training-step throughput of the sparse kernel against the dense path, side by side in one run.

One step = forward, the 2023 loss (mean squared error + λ·L1), backward, parallel-gradient
removal, Adam, decoder renormalisation: what the trainer does per batch. The encoder bias is set
so that each input fires about L0 latents (measured L0 is printed), on Gaussian inputs, for
several L0 and batch sizes; the variants alternate, and each figure is the median. `auto` is
the kernel a run uses by default: it should track the faster of dense and sparse. `auto+fused`
also uses Adam's fused (one-pass) implementation: with sparse products, the optimizer's passes
over the 5.3M parameters become a large share of a CPU step. On a GPU (`--device cuda`) the
variants can include `dense+compile` (`--compile`): the dense step's loss under `torch.compile`,
which fuses the elementwise work around the matrix products. `--scoring` times, instead,
dead-neuron resampling's pass over the training inputs (no gradients: encoder, decoder, loss),
with the dense decoder product against `auto`'s gather of the active rows.

    python bench/sparse_step.py                      # d 576 -> 4,608, L0 10/50/200/1000, batch 512/4096
    python bench/sparse_step.py --d-in 64 --n-features 512 --l0 8 64 --batch-size 64 --steps 2   # a quick check
    python bench/sparse_step.py --device cuda --n-features 4608 36864 --l0 32 200 --batch-size 4096 --steps 20
    python bench/sparse_step.py --scoring --batch-size 8192 --steps 4   # resampling's scoring pass
    python bench/sparse_step.py --record docs/results/sparse_step_cpu.json   # also a stamped record for the docs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe  # noqa: E402  (bench/machine.py)

from bench.record import add_record_option, write_record  # noqa: E402
from sae.architectures import ReLUSAE  # noqa: E402
from sae.architectures.sparse import auto_density_limit  # noqa: E402
from sae.training.resampling import sample_by_loss_squared  # noqa: E402

# (label, kernel, fused Adam, compiled loss): fused shows what a one-pass optimizer adds once the products are
# sparse; the compiled dense step is timed on GPUs only (`--compile`).
VARIANTS = (
    ("dense", "dense", False, False),
    ("sparse", "sparse", False, False),
    ("auto", "auto", False, False),
    ("auto+fused", "auto", True, False),
)
COMPILED_VARIANTS = (*VARIANTS, ("dense+compile", "dense", False, True))
# Resampling's scoring pass: the decoder kernel it runs under (label, kernel).
SCORING_VARIANTS = (("dense", "dense"), ("auto", "auto"))


def sae_firing(d_in: int, n_features: int, l0: int, device: str, seed: int = 0) -> ReLUSAE:
    """The 2023 recipe's SAE (unit-norm decoder), its latents each firing on a fraction l0/n of Gaussian inputs."""
    torch.manual_seed(seed)
    sae = ReLUSAE(d_in, n_features).to(device)
    with torch.no_grad():
        pre = torch.randn(2048, d_in, device=device) @ sae.W_enc
        threshold = pre.kthvalue(round(2048 * (1 - l0 / n_features)), dim=0).values
        sae.b_enc.copy_(-threshold)
    return sae


def train_step(sae: ReLUSAE, opt: torch.optim.Optimizer, x: torch.Tensor, kernel: str, loss=None) -> tuple[bool, float]:
    """What SAETrainingModule does per batch, without Lightning around it."""
    sae.sparse_kernel = kernel
    terms = (loss or sae.loss)(x, 1e-4)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    sae.before_optimizer_step_()
    opt.step()
    sae.after_optimizer_step_()
    return terms.sparse_path, float((terms.features > 0).sum(-1).float().mean())


def measure(
    d_in: int, n_features: int, l0: int, batch: int, steps: int, repeats: int, device: str, variants
) -> dict[str, tuple[float, float, float]]:
    """variant -> (tokens/s median, measured L0, fraction of steps on the sparse path)."""
    saes = {label: sae_firing(d_in, n_features, l0, device) for label, *_ in variants}
    # A tiny lr keeps L0 where it was set during the timed steps.
    opts = {label: torch.optim.Adam(saes[label].parameters(), lr=1e-6, fused=fused) for label, _, fused, _ in variants}
    losses = {label: torch.compile(saes[label].loss) if compiled else None for label, _, _, compiled in variants}
    batches = [torch.randn(batch, d_in, device=device) for _ in range(steps)]
    times: dict[str, list[float]] = {label: [] for label, *_ in variants}
    l0s: dict[str, list[float]] = {label: [] for label, *_ in variants}
    sparse: dict[str, list[bool]] = {label: [] for label, *_ in variants}
    for label, kernel, *_ in variants:  # warm-up: allocator, thread pools, compilation
        for _ in range(3):
            train_step(saes[label], opts[label], batches[0], kernel, losses[label])
    for _ in range(repeats):
        for label, kernel, *_ in variants:  # interleaved, so a busy moment hits all variants alike
            _synchronize(device)
            start = time.perf_counter()
            for x in batches:
                took_sparse, measured_l0 = train_step(saes[label], opts[label], x, kernel, losses[label])
                sparse[label].append(took_sparse)
                l0s[label].append(measured_l0)
            _synchronize(device)
            times[label].append(time.perf_counter() - start)
    return {
        label: (steps * batch / statistics.median(times[label]), statistics.mean(l0s[label]), statistics.mean(sparse[label]))
        for label, *_ in variants
    }


def measure_scoring(
    d_in: int, n_features: int, l0: int, batch: int, steps: int, repeats: int, device: str
) -> dict[str, tuple[float, float, float]]:
    """variant -> (inputs/s median, measured L0, 1.0 where auto's density limit admits the gather else 0.0)."""
    sae = sae_firing(d_in, n_features, l0, device)
    batches = [torch.randn(batch, d_in, device=device) for _ in range(steps)]
    with torch.no_grad():
        measured_l0 = float((sae.encode(batches[0]) > 0).sum(-1).float().mean())
    limit = auto_density_limit(torch.device(device).type, n_features, torch.get_float32_matmul_precision())
    gathers = float(limit is not None and measured_l0 / n_features <= limit)
    times: dict[str, list[float]] = {label: [] for label, _ in SCORING_VARIANTS}
    for repeat in range(repeats + 1):  # the first round warms up
        for label, kernel in SCORING_VARIANTS:
            sae.sparse_kernel = kernel
            _synchronize(device)
            start = time.perf_counter()
            sample_by_loss_squared(sae, batches, n_samples=64, n_inputs=steps * batch, l1_coefficient=1e-4)
            _synchronize(device)
            if repeat:
                times[label].append(time.perf_counter() - start)
    return {
        label: (steps * batch / statistics.median(times[label]), measured_l0, gathers if kernel == "auto" else 0.0)
        for label, kernel in SCORING_VARIANTS
    }


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--n-features", type=int, nargs="+", default=[4608])
    ap.add_argument("--l0", type=int, nargs="+", default=[10, 50, 200, 1000])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    ap.add_argument(
        "--matmul-precision", choices=["highest", "high"], default="highest", help="high: TF32 products on GPUs that have it"
    )
    ap.add_argument("--compile", action="store_true", help="also time the dense step under torch.compile (GPU only)")
    ap.add_argument("--scoring", action="store_true", help="time resampling's scoring pass instead of training steps")
    add_record_option(ap)
    args = ap.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    bad = [l0 for l0 in args.l0 if not 0 < l0 < min(args.n_features)]
    if bad:
        ap.error(f"--l0 {bad}: each L0 must lie between 1 and the smallest --n-features - 1 ({min(args.n_features) - 1}).")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this machine has no CUDA GPU; use --device cpu.")
    if args.compile and not args.device.startswith("cuda"):
        ap.error("--compile: the compiled step is measured on GPUs only (--device cuda).")
    if args.compile and args.scoring:
        ap.error("--compile and --scoring: the compiled variant is a training step; choose one.")
    variants = SCORING_VARIANTS if args.scoring else COMPILED_VARIANTS if args.compile else VARIANTS
    what, unit = ("scoring pass", "inputs/s") if args.scoring else ("training step", "tok/s")

    machine = describe()
    print(f"machine: {machine}")
    print(
        f"{what}: SAE d_in {args.d_in}, float32 ({args.matmul_precision} matmul precision) on {args.device}, "
        f"{args.steps} batches x {args.repeats} repeats (median); auto's density limit per n: "
        + ", ".join(
            f"{n} {auto_density_limit(torch.device(args.device).type, n, args.matmul_precision)}" for n in args.n_features
        )
    )
    labels = [label for label, *_ in variants]
    rows = []
    print(
        f"{'n':>7} {'batch':>6} {'L0 set':>7} {'L0':>7} {'density':>8} {'auto sparse':>12} "
        + " ".join(f"{label + ' ' + unit:>17}" for label in labels)
        + " "
        + " ".join(f"{label + '/dense':>17}" for label in labels[1:])
    )
    for n in args.n_features:
        for batch in args.batch_size:
            for l0 in args.l0:
                if args.scoring:
                    r = measure_scoring(args.d_in, n, l0, batch, args.steps, args.repeats, args.device)
                else:
                    r = measure(args.d_in, n, l0, batch, args.steps, args.repeats, args.device, variants)
                dense, measured_l0 = r["dense"][0], r["dense"][1]
                print(
                    f"{n:>7} {batch:>6} {l0:>7} {measured_l0:>7.1f} {measured_l0 / n:>8.2%} {r['auto'][2]:>12.0%} "
                    + " ".join(f"{r[label][0]:>17.0f}" for label in labels)
                    + " "
                    + " ".join(f"{r[label][0] / dense:>16.2f}x" for label in labels[1:]),
                    flush=True,
                )
                rows.append(
                    {
                        "latents": n,
                        "batch": batch,
                        "L0": round(measured_l0, 1),
                        "active": f"{measured_l0 / n:.2%}",
                        "auto sparse": f"{r['auto'][2]:.0%}",
                        **{f"{label} {unit}": round(r[label][0]) for label in labels},
                        **{f"{label} / dense": round(r[label][0] / dense, 2) for label in labels[1:]},
                    }
                )
    if args.record:
        title = (
            f"{what} {unit}, d_in {args.d_in}, float32 ({args.matmul_precision} matmul precision) on {args.device}, "
            f"median of {args.repeats} repeats of {args.steps} batches"
        )
        write_record(args.record, title, rows, machine=machine)


if __name__ == "__main__":
    main()
