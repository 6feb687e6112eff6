"""Training-step throughput of the sparse kernel against the dense path, side by side in one run.

One step = forward, the 2023 loss (mean squared error + λ·L1), backward, parallel-gradient
removal, Adam, decoder renormalisation: what the trainer does per batch. The encoder bias is set
so that each input fires about L0 latents (measured L0 is printed), on Gaussian inputs, for
several L0 and batch sizes; the variants alternate, and each figure is the median. `auto` is
the kernel a run uses by default: it should track the faster of dense and sparse. `auto+fused`
also uses Adam's fused (one-pass) implementation: with sparse products, the optimizer's passes
over the 5.3M parameters become a large share of a CPU step.

    python bench/sparse_step.py                      # d 576 -> 4,608, L0 10/50/200/1000, batch 512/4096
    python bench/sparse_step.py --d-in 64 --n-features 512 --l0 8 64 --batch-size 64 --steps 2   # a quick check
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

from sae.architectures import ReLUSAE  # noqa: E402
from sae.sparse import MAX_SPARSE_DENSITY  # noqa: E402

# (label, kernel, fused Adam): the last shows what a one-pass optimizer adds once the products are sparse.
VARIANTS = (("dense", "dense", False), ("sparse", "sparse", False), ("auto", "auto", False), ("auto+fused", "auto", True))


def sae_firing(d_in: int, n_features: int, l0: int, seed: int = 0) -> ReLUSAE:
    """The 2023 recipe's SAE (unit-norm decoder), its latents each firing on a fraction l0/n of Gaussian inputs."""
    torch.manual_seed(seed)
    sae = ReLUSAE(d_in, n_features)
    with torch.no_grad():
        pre = torch.randn(2048, d_in) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre, 1 - l0 / n_features, dim=0))
    return sae


def train_step(sae: ReLUSAE, opt: torch.optim.Optimizer, x: torch.Tensor, kernel: str) -> tuple[bool, float]:
    """What SAETrainingModule does per batch, without Lightning around it."""
    sae.sparse_kernel = kernel
    terms = sae.loss(x, 1e-4)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    sae.before_optimizer_step_()
    opt.step()
    sae.after_optimizer_step_()
    return terms.sparse_path, float((terms.features > 0).sum(-1).float().mean())


def measure(d_in: int, n_features: int, l0: int, batch: int, steps: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """variant -> (tokens/s median, measured L0, fraction of steps on the sparse path)."""
    saes = {label: sae_firing(d_in, n_features, l0) for label, _, _ in VARIANTS}
    # A tiny lr keeps L0 where it was set during the timed steps.
    opts = {label: torch.optim.Adam(saes[label].parameters(), lr=1e-6, fused=fused) for label, _, fused in VARIANTS}
    batches = [torch.randn(batch, d_in) for _ in range(steps)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    l0s: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    sparse: dict[str, list[bool]] = {label: [] for label, _, _ in VARIANTS}
    for label, kernel, _ in VARIANTS:  # warm-up: allocator, thread pools
        train_step(saes[label], opts[label], batches[0], kernel)
    for _ in range(repeats):
        for label, kernel, _ in VARIANTS:  # interleaved, so a busy moment hits all variants alike
            start = time.perf_counter()
            for x in batches:
                took_sparse, measured_l0 = train_step(saes[label], opts[label], x, kernel)
                sparse[label].append(took_sparse)
                l0s[label].append(measured_l0)
            times[label].append(time.perf_counter() - start)
    return {
        label: (steps * batch / statistics.median(times[label]), statistics.mean(l0s[label]), statistics.mean(sparse[label]))
        for label, _, _ in VARIANTS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--n-features", type=int, default=4608)
    ap.add_argument("--l0", type=int, nargs="+", default=[10, 50, 200, 1000])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bad = [l0 for l0 in args.l0 if not 0 < l0 < args.n_features]
    if bad:
        ap.error(f"--l0 {bad}: each L0 must lie between 1 and --n-features - 1 ({args.n_features - 1}).")

    print(f"machine: {describe()}")
    print(
        f"SAE {args.d_in} -> {args.n_features}, float32, {args.steps} steps x {args.repeats} repeats (median); "
        f"auto takes the sparse path at density <= {MAX_SPARSE_DENSITY}"
    )
    labels = [label for label, _, _ in VARIANTS]
    print(
        f"{'batch':>6} {'L0 set':>7} {'L0':>7} {'density':>8} {'auto sparse':>12} "
        + " ".join(f"{label + ' tok/s':>17}" for label in labels)
        + " "
        + " ".join(f"{label + '/dense':>17}" for label in labels[1:])
    )
    for batch in args.batch_size:
        for l0 in args.l0:
            r = measure(args.d_in, args.n_features, l0, batch, args.steps, args.repeats)
            dense, measured_l0 = r["dense"][0], r["dense"][1]
            print(
                f"{batch:>6} {l0:>7} {measured_l0:>7.1f} {measured_l0 / args.n_features:>8.2%} {r['auto'][2]:>12.0%} "
                + " ".join(f"{r[label][0]:>17.0f}" for label in labels)
                + " "
                + " ".join(f"{r[label][0] / dense:>16.2f}x" for label in labels[1:]),
                flush=True,
            )


if __name__ == "__main__":
    main()
