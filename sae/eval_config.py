"""Typed config of `evaluate.py`, so a bad value fails at start-up naming its field.

The language model, data and logger default to the training run's (cfg.json's `train_config`);
`model`, `data`, `activations` and `logger` here hold only overrides, e.g. `+model.dtype=bfloat16`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sae.config import ConfigError, _require

STAGES = ("metrics", "interp", "all", "dashboard", "serve", "rubric_report")


@dataclass
class MetricsConfig:
    # Spliced LM cross-entropy (reconstruction and KL scores): full forwards, three per batch, so
    # a modest fixed count (~590 model tokens/s on 2 CPU cores).
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

    def __post_init__(self) -> None:
        for name in ("ce_tokens", "heldout_tokens", "density_tokens"):
            _require(getattr(self, name) >= 0, f"metrics.{name}={getattr(self, name)} must be >= 0 (0 skips that part).")
        _require(self.ce_batch_size >= 1, f"metrics.ce_batch_size={self.ce_batch_size} must be >= 1.")
        _require(self.harvest_batch_size >= 1, f"metrics.harvest_batch_size={self.harvest_batch_size} must be >= 1.")
        _require(self.similarity_plot_features >= 2, f"metrics.similarity_plot_features={self.similarity_plot_features} must be >= 2.")


@dataclass
class EvaluateConfig:
    sae_path: str = MISSING  # the SAE directory (sae.safetensors + cfg.json) or its training run directory
    stage: str = "metrics"  # metrics | interp | all | dashboard | serve | rubric_report
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Overrides of the training run's model / data / activations / logger settings.
    model: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    activations: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(default_factory=dict)
    # Settings of the interpretability stage (sae.interp); filled by its own config files.
    interp: Optional[Any] = None
    explainer: Optional[Any] = None
    units: Optional[str] = None  # shorthand for interp.units (and dashboard.units): features | neurons
    # Settings of the feature browser (sae/dashboard/config.py, conf/dashboard/default.yaml).
    dashboard: Optional[Any] = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.stage in STAGES, f"stage={self.stage!r}: choose one of {STAGES}.")
        _require(self.sae_path not in ("", "???"), "sae_path is missing: python evaluate.py sae_path=<training run dir or its sae/ dir>.")


def default_eval_dir(sae_path: str) -> str:
    """`<training run dir>/eval` (the run that holds `sae/`), else `<sae dir>/eval`: reruns reuse it."""
    from sae.io import find_sae_dir

    try:
        sae_dir = find_sae_dir(sae_path)
    except FileNotFoundError as exc:
        raise ConfigError(f"sae_path={sae_path}: {exc}") from None
    run_dir = sae_dir.parent if sae_dir.name == "sae" else sae_dir
    return str(Path(run_dir).resolve() / "eval")


def register_eval_configs() -> None:
    OmegaConf.register_new_resolver("eval_dir", default_eval_dir, replace=True)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
