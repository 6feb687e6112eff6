"""The sweep report's plots (PNG): the L0 / reconstruction frontier, metrics vs expansion and vs
tokens, and every run's feature-density histogram side by side.

The frontier uses the reconstruction score (spliced-in CE) when the runs have it and falls back to
explained variance, so a sweep whose runs skipped the language-model evaluation still gets one.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [("l0", "L0"), ("reconstruction_score", "reconstruction score"), ("explained_variance", "explained variance"),
           ("dead_pct", "dead features %"), ("ultralow_pct", "ultralow features %")]


def quality_metric(rows) -> tuple[str, str]:
    """(row field, label): the reconstruction score if any run has it, else explained variance."""
    if any(r.reconstruction_score is not None for r in rows):
        return "reconstruction_score", "reconstruction score (CE recovered)"
    return "explained_variance", "explained variance"


def _label(row) -> str:
    parts = [f"x{row.expansion}" if row.expansion else None,
             f"l1={row.l1_coefficient:.0e}" if row.l1_coefficient is not None else None]
    return " ".join(p for p in parts if p) or row.run


def plot_frontier(rows, path: Path) -> Path | None:
    """L0 (lower is sparser) against quality, with the Pareto frontier (no run both sparser and better)."""
    key, label = quality_metric(rows)
    pts = sorted((r.l0, getattr(r, key), r) for r in rows if r.l0 is not None and getattr(r, key) is not None)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    expansions = sorted({r.expansion for *_, r in pts if r.expansion})
    cmap = plt.get_cmap("viridis", max(len(expansions), 1))
    for l0, q, r in pts:
        color = cmap(expansions.index(r.expansion)) if r.expansion in expansions else "gray"
        ax.scatter(l0, q, color=color, s=30, zorder=3)
        ax.annotate(_label(r), (l0, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    frontier, best = [], float("-inf")
    for l0, q, _ in pts:
        if q > best:
            frontier.append((l0, q))
            best = q
    ax.plot(*zip(*frontier), color="tab:red", lw=1, ls="--", label="frontier", zorder=2)
    for i, e in enumerate(expansions):
        ax.scatter([], [], color=cmap(i), label=f"x{e}")
    if pts[-1][0] / max(pts[0][0], 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("L0 (active features per token)")
    ax.set_ylabel(label)
    ax.set_title("sparsity vs reconstruction", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metrics_vs(rows, axis: str, path: Path) -> Path | None:
    """One panel per metric against `axis` (expansion or tokens); one line per setting of the other knobs."""
    values = {getattr(r, axis) for r in rows if getattr(r, axis) is not None}
    if len(values) < 2:
        return None
    metrics = [(k, lbl) for k, lbl in METRICS if any(getattr(r, k) is not None for r in rows)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    others = [a for a in ("expansion", "tokens", "l1_coefficient", "lr") if a != axis]
    lines = defaultdict(list)
    for r in rows:
        if getattr(r, axis) is not None:
            lines[tuple(getattr(r, a) for a in others)].append(r)
    varying = [i for i in range(len(others)) if len({s[i] for s in lines}) > 1]  # legend: what differs
    for ax, (key, label) in zip(axes[0], metrics):
        for setting, members in lines.items():
            pts = sorted((getattr(r, axis), getattr(r, key)) for r in members if getattr(r, key) is not None)
            if pts:
                name = ", ".join(f"{others[i]}={setting[i]:g}" for i in varying if setting[i] is not None)
                ax.plot(*zip(*pts), marker="o", label=name or None)
        ax.set_xscale("log", base=2 if axis == "expansion" else 10)
        ax.set_xlabel(axis)
        ax.set_title(label, fontsize=9)
    if len(lines) > 1:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_density_grid(rows, sweep_dir: Path, path: Path, columns: int = 4) -> Path | None:
    """Each run's last density histogram (plots/density.png, else its latest density_step*.png), side by side."""
    images = [(r, _last_density_png(sweep_dir / r.path / "plots")) for r in rows]
    images = [(r, p) for r, p in images if p is not None]
    if not images:
        return None
    n_cols = min(columns, len(images))
    n_rows = -(-len(images) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 2.6 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (r, p) in zip(axes.flat, images):
        ax.imshow(mpimg.imread(p))
        ax.set_title(r.run, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _last_density_png(plots: Path) -> Path | None:
    if (plots / "density.png").exists():
        return plots / "density.png"
    steps = sorted(plots.glob("density_step*.png"))
    return steps[-1] if steps else None


def write_plots(rows, sweep_dir: Path, out_dir: Path) -> dict[str, Path]:
    """The plots that the rows can support (e.g. no tokens plot when one budget was used)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "frontier": plot_frontier(rows, out_dir / "frontier.png"),
        "vs_expansion": plot_metrics_vs(rows, "expansion", out_dir / "metrics_vs_expansion.png"),
        "vs_tokens": plot_metrics_vs(rows, "tokens", out_dir / "metrics_vs_tokens.png"),
        "density": plot_density_grid(rows, sweep_dir, out_dir / "density_histograms.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
