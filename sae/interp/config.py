"""Typed settings of the interpretability stage, so a bad value fails at start-up naming its field.

`InterpConfig` says which units to score and how records are drawn and scored (defaults follow
the paper: 60 scored records x 9 tokens = 540 predictions per unit). Which model explains and
simulates is the explainer's own config (sae/interp/backends/, conf/explainer/*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from sae.core.checks import require
from sae.interp.scoring import SPLITS

UNIT_KINDS = ("features", "neurons")


@dataclass
class InterpConfig:
    # "features": the SAE's features; "neurons": the raw activations of the hook the SAE reads
    # (or of `neuron_hook`, e.g. "mlp.hook_post" for the MLP's own neurons).
    units: str = "features"
    neuron_hook: Optional[str] = None
    n_features: int = 8  # how many units, sampled at random among those that fire on held-out text
    features: Optional[list[int]] = None  # explicit unit indices instead of a sample
    seed: int = 0
    # Held-out text: `n_contexts` windows of `window` tokens (after BOS), one model pass for all units.
    n_contexts: int = 2000
    window: int = 64
    batch_size: int = 16
    # Records per unit: explanation uses `n_explain` top-activating windows (whole); scoring uses
    # `n_score_top` other top windows and `n_score_random` random windows, each cut to `score_tokens`.
    n_explain: int = 10
    n_score_top: int = 30
    n_score_random: int = 60
    score_tokens: int = 9
    n_quantiles: int = 5
    per_quantile: int = 4
    # top_and_random: the top records + as many random ones (30 + 30 = 60 records = 540 tokens);
    # random_only: all random records; quantiles: records drawn from activation quantiles.
    splits: list[str] = field(default_factory=lambda: ["top_and_random", "random_only"])
    # Also score the token-pattern baseline beside an LLM explainer (cheap, no LLM).
    baseline: bool = True
    # Score each unit's records with another unit's explanation too (the control every method needs).
    wrong_explanation_control: bool = True
    bootstrap_resamples: int = 2000

    def __post_init__(self) -> None:
        require(self.units in UNIT_KINDS, f"interp.units={self.units!r}: choose one of {UNIT_KINDS}.")
        require(self.n_features >= 1, f"interp.n_features={self.n_features} must be >= 1.")
        require(self.window >= 2, f"interp.window={self.window} must be >= 2.")
        require(
            1 <= self.score_tokens <= self.window,
            f"interp.score_tokens={self.score_tokens} must be in 1..interp.window ({self.window}).",
        )
        require(
            self.n_contexts >= self.n_score_random,
            f"interp.n_contexts={self.n_contexts} must be >= interp.n_score_random={self.n_score_random}.",
        )
        require(self.n_explain >= 1, f"interp.n_explain={self.n_explain} must be >= 1.")
        require(self.n_score_top >= 0, f"interp.n_score_top={self.n_score_top} must be >= 0.")
        require(self.n_score_random >= 0, f"interp.n_score_random={self.n_score_random} must be >= 0.")
        bad = [s for s in self.splits if s not in SPLITS]
        require(not bad and bool(self.splits), f"interp.splits={list(self.splits)}: choose from {tuple(SPLITS)}.")
        require(self.n_contexts >= 1, f"interp.n_contexts={self.n_contexts} must be >= 1.")
        require(self.batch_size >= 1, f"interp.batch_size={self.batch_size} must be >= 1 (contexts per forward).")
        require(self.n_quantiles >= 1, f"interp.n_quantiles={self.n_quantiles} must be >= 1.")
        require(self.per_quantile >= 1, f"interp.per_quantile={self.per_quantile} must be >= 1.")
        require(self.bootstrap_resamples >= 1, f"interp.bootstrap_resamples={self.bootstrap_resamples} must be >= 1.")
        require(0 <= self.seed < 2**32, f"interp.seed={self.seed} must be in [0, 2**32).")
        if self.features is not None:
            require(all(int(f) >= 0 for f in self.features), f"interp.features={list(self.features)} must be unit indices >= 0.")


def register_interp_configs() -> None:
    """The schema of `interp:` in conf/evaluate.yaml (the explainers' are sae.interp.backends')."""
    ConfigStore.instance().store(name="interp_schema", node=InterpConfig)
