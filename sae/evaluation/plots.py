"""The SAE's plots: the feature-density histogram and the decoder-similarity histograms (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sae.core.plots import plt, save_figure


def plot_density_histogram(log10_density: np.ndarray, path: str | Path, title: str = "feature density") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.clip(log10_density, -10, 0), bins=np.linspace(-10, 0, 61), color="tab:blue")
    ax.axvline(-6, color="tab:red", ls="--", lw=1, label="1e-6 (ultralow)")
    ax.axvline(-5, color="tab:orange", ls="--", lw=1, label="1e-5")
    ax.set_xlabel("log10(feature density + 1e-10)")
    ax.set_ylabel("features")
    return _save(fig, ax, path, title)


def plot_decoder_similarity(groups: dict[str, np.ndarray], means: dict[str, float], path: str | Path, title: str) -> Path:
    """Histograms of pairwise decoder cosines per feature group ("rare features are more similar")."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-1, 1, 81)
    for (name, cosines), color in zip(groups.items(), ("tab:red", "tab:blue", "tab:green"), strict=False):
        if len(cosines):
            ax.hist(cosines, bins=bins, density=True, alpha=0.55, color=color, label=f"{name}: mean {means[name]:.3f}")
    ax.set_xlabel("cosine similarity between decoder directions (pairs within a group)")
    ax.set_ylabel("density of pairs")
    return _save(fig, ax, path, title)


def _save(fig, ax, path: str | Path, title: str) -> Path:
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)
