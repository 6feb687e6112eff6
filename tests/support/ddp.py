"""Comparing runs that trained one SAE on different numbers of DDP processes."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from sae.formats.native import WEIGHTS


def assert_trained_alike(run_dir: Path, reference: Path, lr: float, steps: int) -> None:
    """The weights of two runs whose batches were summed in different orders (float32 rounding apart).

    Most weights agree to rounding (~1e-7; 1e-5 allowed). Adam turns rounding-level differences in the
    near-zero gradients of rarely firing latents into steps of up to ~lr, and those spread through the shared
    decoder bias, so some weights may differ by up to lr per step, no more: a few percent of a tensor, by CPU
    and library build. A resampled latent given another input differs by far more than lr per step, and a
    missing or wrong gradient reduction moves nearly every weight.
    """
    ours, theirs = load_file(run_dir / "sae" / WEIGHTS), load_file(reference / "sae" / WEIGHTS)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        diff = (ours[name].double() - theirs[name].double()).abs()
        assert diff.max() <= lr * steps, f"{name} differs from the reference by {diff.max():.2e}"
        assert (diff <= 1e-5).double().mean() >= 0.9, f"{name}: {(diff > 1e-5).double().mean():.1%} of it differs"
