"""Typed config of `evaluate.py`, so a bad value fails at start-up naming its field.

The language model, data and logger default to the training run's (cfg.json's `train_config`);
`model`, `data`, `activations` and `logger` here hold only overrides, e.g. `+model.dtype=bfloat16`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from sae.core.checks import require
from sae.formats.native import find_sae_dir

STAGES = ("metrics", "interp", "all", "dashboard", "serve", "rubric_report")
SWEEP_STAGES = ("metrics", "interp", "all")


@dataclass
class MetricsConfig:
    # Spliced LM cross-entropy (reconstruction and KL scores): full forwards, three per batch (two once
    # the zero-ablated run of these tokens is stored), so a modest fixed count: 16,384 tokens take ~3 min
    # on 2 CPU cores for the first SAE of a model and hook, ~2 min for the next.
    ce_tokens: int = 16_384
    ce_batch_size: int = 8
    # Reconstruction statistics (L0, EV, MSE, cosine, norm ratio) on held-out activations
    # (harvested with stop_at_layer, cheap); capped by what the held-out split holds.
    heldout_tokens: int = 300_000
    # Feature density (dead / ultralow fractions, histogram) on the training activations: the run's
    # activation cache, harvested into it first if it is missing.
    density_tokens: int = 500_000
    harvest_batch_size: int = 32
    # "Rare features are more similar": features sampled per group for the cosine histogram.
    similarity_plot_features: int = 2000
    # Memory the [rows, n_features] feature activations of one chunk may take; rows per chunk follow
    # from it, so a 256x SAE is evaluated in a few hundred MB rather than tens of GB.
    memory_budget_mb: int = 512
    # First-letter feature absorption (sae/evaluation/absorption.py) on this many single-token words of the
    # vocabulary; 0 skips it. 4,000 for comparisons (the words' activations and probe are stored per model and
    # hook, so only the first SAE of a hook pays for them).
    absorption_words: int = 0

    def __post_init__(self) -> None:
        for name in ("ce_tokens", "heldout_tokens", "density_tokens", "absorption_words"):
            require(getattr(self, name) >= 0, f"metrics.{name}={getattr(self, name)} must be >= 0 (0 skips that part).")
        require(self.ce_batch_size >= 1, f"metrics.ce_batch_size={self.ce_batch_size} must be >= 1.")
        require(self.harvest_batch_size >= 1, f"metrics.harvest_batch_size={self.harvest_batch_size} must be >= 1.")
        require(self.memory_budget_mb >= 1, f"metrics.memory_budget_mb={self.memory_budget_mb} must be >= 1.")
        require(
            self.absorption_words == 0 or self.absorption_words >= 10,
            f"metrics.absorption_words={self.absorption_words} must be 0 (skip) or >= 10.",
        )
        require(
            self.similarity_plot_features >= 2, f"metrics.similarity_plot_features={self.similarity_plot_features} must be >= 2."
        )


@dataclass
class EvaluateConfig:
    sae_path: Optional[str] = None  # the SAE directory (sae.safetensors + cfg.json) or its training run directory
    # Instead of sae_path: every finished SAE of a sweep directory (multirun/<name>), in one job, under one
    # unit-sampling protocol (sae/sweeps/evaluation.py); stage=metrics | interp | all.
    sweep_dir: Optional[str] = None
    stage: str = "metrics"  # metrics | interp | all | dashboard | serve | rubric_report
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Other evaluation corpora, by name of a conf/data entry (or its alias), e.g. [wiki,mixed,shakespeare]:
    # the held-out metrics on each, in eval/metrics_by_corpus.json and .md (metrics.json keeps the training data's).
    eval_corpora: list[str] = field(default_factory=list)
    # Overrides of the training run's model / data / activations / logger settings.
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    # Settings of the interpretability stage (sae.interp); filled by its own config files.
    interp: Optional[Any] = None
    explainer: Optional[Any] = None
    units: Optional[str] = None  # shorthand for interp.units (and dashboard.units): features | neurons
    # Settings of the feature browser (sae/dashboard/config.py, conf/dashboard/default.yaml).
    dashboard: Optional[Any] = None
    seed: int = 0
    device: str = "auto"  # where the SAE runs: auto (cuda when available) | cpu | cuda | cuda:1 ...

    def __post_init__(self) -> None:
        require(self.stage in STAGES, f"stage={self.stage!r}: choose one of {STAGES}.")
        require(
            self.sae_path not in (None, "", "???") or bool(self.sweep_dir),
            "sae_path is missing: python evaluate.py sae_path=<training run dir or its sae/ dir> (or sweep_dir=<sweep dir>).",
        )
        require(
            not (self.sweep_dir and self.sae_path not in (None, "", "???")),
            f"sae_path={self.sae_path} and sweep_dir={self.sweep_dir}: give one of them.",
        )
        if self.sweep_dir:
            require(Path(self.sweep_dir).is_dir(), f"sweep_dir={self.sweep_dir} is not a directory: give a multirun directory.")
            stages = SWEEP_STAGES
            require(self.stage in stages, f"stage={self.stage!r} with sweep_dir: choose one of {stages} (one SAE at a time).")
        require(0 <= self.seed < 2**32, f"seed={self.seed} must be in [0, 2**32).")


def default_eval_dir(sae_path: str | None, sweep_dir: str | None = None) -> str:
    """`<training run dir>/eval` (the run that holds `sae/`), else `<sae dir>/eval`: reruns reuse it.
    With a sweep directory, `<sweep dir>/eval` (each SAE's results still go to its own run's `eval/`).

    A missing or wrong sae_path resolves to a scratch directory instead of failing here, inside Hydra's
    interpolation of its run directory: the evaluation itself then stops with a one-line error."""
    if sweep_dir and not sae_path:
        return str(Path(sweep_dir).resolve() / "eval")
    try:
        sae_dir = find_sae_dir(sae_path) if sae_path else None
    except FileNotFoundError:
        sae_dir = None
    if sae_dir is None:
        return str(Path(tempfile.gettempdir()) / "sae-evaluate-no-sae")
    run_dir = sae_dir.parent if sae_dir.name == "sae" else sae_dir
    return str(Path(run_dir).resolve() / "eval")


def register_eval_configs() -> None:
    OmegaConf.register_new_resolver("eval_dir", default_eval_dir, replace=True)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
