"""The sweep report's plots (PNG): the L0 / reconstruction frontier (a curve per recipe or
architecture), metrics vs expansion and vs tokens, and every run's feature-density histogram side
by side. Runs that differ only by seed are one point: their mean, with a 95% error bar.

The frontier uses the reconstruction score (spliced-in CE) when the runs have it and falls back to
explained variance, so a sweep whose runs skipped the language-model evaluation still gets one.
With interpretability scores: interpretability against the reconstruction score and against L0, one point
per setting labelled by its knobs, with the wrong-explanation control beside it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.image as mpimg

from sae.core.plots import plt, save_figure
from sae.training.identity import number

METRICS = [
    ("l0", "L0"),
    ("reconstruction_score", "reconstruction score"),
    ("kl_score", "KL score"),
    ("explained_variance", "explained variance"),
    ("dead_pct", "dead features %"),
    ("ultralow_pct", "ultralow features %"),
    ("interp", "interpretability"),
]


def quality_metric(rows) -> tuple[str, str]:
    """(row field, label): the reconstruction score if any run has it, else explained variance."""
    if any(r.reconstruction_score is not None for r in rows):
        return "reconstruction_score", "reconstruction score (CE recovered)"
    return "explained_variance", "explained variance"


def _label(setting, with_lr: bool = False) -> str:
    parts = [
        f"x{setting.expansion}" if setting.expansion else None,
        f"k={setting.k}" if setting.k is not None else None,
        f"l1={number(setting.l1_coefficient)}" if setting.l1_coefficient is not None and setting.k is None else None,
        f"lr={number(setting.lr)}" if with_lr and setting.lr is not None else None,
    ]
    return " ".join(p for p in parts if p) or setting.label


def plot_frontier(rows, settings, path: Path) -> Path | None:
    """L0 (lower is sparser) against quality: one curve per recipe / architecture, seeds averaged with
    95% error bars, and the Pareto frontier over all (no setting both sparser and better)."""
    key, label = quality_metric(rows)
    pts = sorted(
        ((s.mean["l0"], s.mean[key], s) for s in settings if s.mean["l0"] is not None and s.mean[key] is not None),
        key=lambda p: p[:2],
    )
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    families = sorted({s.family for *_, s in pts})
    colors = plt.get_cmap("tab10")
    with_lr = len({s.lr for *_, s in pts}) > 1
    for i, family in enumerate(families):
        members = [(l0, q, s) for l0, q, s in pts if s.family == family]
        ax.errorbar(
            [m[0] for m in members],
            [m[1] for m in members],
            xerr=[m[2].ci95["l0"] or 0 for m in members],
            yerr=[m[2].ci95[key] or 0 for m in members],
            color=colors(i % 10),
            marker="o",
            ms=5,
            lw=1,
            capsize=3,
            label=family,
            zorder=3,
        )
        for l0, q, s in members:
            ax.annotate(
                _label(s, with_lr) + (f" (n={s.n})" if s.n > 1 else ""),
                (l0, q),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    frontier, best = [], float("-inf")
    for l0, q, _ in pts:
        if q > best:
            frontier.append((l0, q))
            best = q
    ax.plot(*zip(*frontier, strict=False), color="tab:red", lw=1, ls="--", label="frontier", zorder=2)
    if pts[-1][0] / max(pts[0][0], 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("L0 (active features per token, held out)")
    ax.set_ylabel(label)
    ax.set_title("sparsity vs reconstruction", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=100)


def plot_metrics_vs(rows, settings, axis: str, path: Path) -> Path | None:
    """One panel per metric against `axis` (expansion or tokens); one line per setting of the other knobs;
    seeds averaged, with 95% error bars."""
    values = {getattr(r, axis) for r in rows if getattr(r, axis) is not None}
    if len(values) < 2:
        return None
    metrics = [(k, lbl) for k, lbl in METRICS if any(getattr(r, k) is not None for r in rows)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    others = [a for a in ("family", "expansion", "k", "tokens", "l1_coefficient", "lr") if a != axis]
    lines = defaultdict(list)
    for s in settings:
        if getattr(s, axis) is not None:
            lines[tuple(getattr(s, a) for a in others)].append(s)
    varying = [i for i in range(len(others)) if len({k[i] for k in lines}) > 1]  # legend: what differs
    for ax, (key, label) in zip(axes[0], metrics, strict=False):
        for knobs, members in lines.items():
            pts = sorted((getattr(s, axis), _mean(s, key), _ci(s, key)) for s in members if _mean(s, key) is not None)
            if pts:
                name = ", ".join(f"{others[i]}={knobs[i]}" for i in varying if knobs[i] is not None)
                ax.errorbar(
                    [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=name or None
                )
        ax.set_xscale("log", base=2 if axis == "expansion" else 10)
        ax.set_xlabel(axis)
        ax.set_title(label, fontsize=9)
    if len(lines) > 1:
        axes[0][0].legend(fontsize=6)
    return save_figure(fig, path, dpi=90)


def _mean(setting, key: str):
    """A setting's mean of `key` (ultralow_pct, not aggregated, from its single run)."""
    if key in setting.mean:
        return setting.mean[key]
    return getattr(setting.members[0], key) if setting.n == 1 else None


def _ci(setting, key: str) -> float:
    return setting.ci95.get(key) or 0.0


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
    for ax, (r, p) in zip(axes.flat, images, strict=False):
        ax.imshow(mpimg.imread(p))
        ax.set_title(r.run, fontsize=7)
    return save_figure(fig, path, dpi=90)


def _last_density_png(plots: Path) -> Path | None:
    if (plots / "density.png").exists():
        return plots / "density.png"
    steps = sorted(plots.glob("density_step*.png"))
    return steps[-1] if steps else None


def _interp_error(setting) -> tuple[float, float]:
    """(below, above) the mean: the t-interval over seeds, or one run's bootstrap interval over features."""
    if setting.n > 1:
        half = setting.ci95.get("interp") or 0.0
        return half, half
    low, high, mean = setting.interp_ci_low, setting.interp_ci_high, setting.mean["interp"]
    if low is None or high is None:
        return 0.0, 0.0
    return max(mean - low, 0.0), max(high - mean, 0.0)


def plot_interp_vs(rows, settings, key: str, xlabel: str, path: Path) -> Path | None:
    """Interpretability (mean Spearman, primary split) against `key`: a point per setting with 95% error bars
    (x: over seeds; y: over seeds, or over features for one seed), and the control as hollow grey points."""
    pts = [s for s in settings if s.mean.get(key) is not None and s.mean.get("interp") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    errors = [_interp_error(s) for s in pts]
    ax.errorbar(
        [s.mean[key] for s in pts],
        [s.mean["interp"] for s in pts],
        xerr=[s.ci95.get(key) or 0 for s in pts],
        yerr=[[e[0] for e in errors], [e[1] for e in errors]],
        fmt="o",
        color="tab:blue",
        capsize=3,
        label="own explanation",
        zorder=3,
    )
    control = [s for s in pts if s.mean.get("interp_control") is not None]
    if control:
        ax.scatter(
            [s.mean[key] for s in control],
            [s.mean["interp_control"] for s in control],
            facecolors="none",
            edgecolors="grey",
            label="control (another feature's explanation)",
            zorder=2,
        )
    for s in pts:
        text = _label(s, with_lr=True)  # expansion, L1 (or k) and lr
        ax.annotate(
            text + (f" (n={s.n})" if s.n > 1 else ""),
            (s.mean[key], s.mean["interp"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if key == "l0" and max(s.mean[key] for s in pts) / max(min(s.mean[key] for s in pts), 1e-9) > 20:
        ax.set_xscale("log")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("interpretability (mean Spearman)")
    ax.set_title(f"interpretability vs {xlabel.split(' (')[0]}", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=100)


def write_plots(rows, settings, sweep_dir: Path, out_dir: Path) -> dict[str, Path]:
    """The plots that the rows can support (e.g. no tokens plot when one budget was used)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "frontier": plot_frontier(rows, settings, out_dir / "frontier.png"),
        "vs_expansion": plot_metrics_vs(rows, settings, "expansion", out_dir / "metrics_vs_expansion.png"),
        "vs_tokens": plot_metrics_vs(rows, settings, "tokens", out_dir / "metrics_vs_tokens.png"),
        "density": plot_density_grid(rows, sweep_dir, out_dir / "density_histograms.png"),
        "interp_vs_reconstruction": plot_interp_vs(
            rows, settings, "reconstruction_score", "reconstruction score (CE recovered)", out_dir / "interp_vs_recon.png"
        ),
        "interp_vs_l0": plot_interp_vs(rows, settings, "l0", "L0 (active features per token)", out_dir / "interp_vs_l0.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
