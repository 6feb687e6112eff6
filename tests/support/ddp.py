"""Comparing runs that trained one SAE on different numbers of DDP processes."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from sae.formats.native import WEIGHTS


def assert_trained_alike(run_dir: Path, reference: Path, lr: float, steps: int) -> None:
    """The weights of two runs whose batches were summed in different orders (float32 rounding apart).

    Almost every weight agrees to rounding (~1e-7; 1e-5 allowed). Adam turns rounding-level differences in
    the near-zero gradients of a few rarely firing latents into steps of up to ~lr, so those may differ by up
    to lr per step, no more; a resampled latent given another input, or a wrong gradient, differs by far more.
    """
    ours, theirs = load_file(run_dir / "sae" / WEIGHTS), load_file(reference / "sae" / WEIGHTS)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        diff = (ours[name].double() - theirs[name].double()).abs()
        assert diff.max() <= lr * steps, f"{name} differs from the reference by {diff.max():.2e}"
        assert (diff <= 1e-5).double().mean() >= 0.99, f"{name}: {(diff > 1e-5).double().mean():.1%} of it differs"
