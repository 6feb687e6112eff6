"""Typed interpretability results: per unit and method, and summarised across units.

Every method is scored with the unit's own explanation and with another unit's (the control), on
the same records; summaries average both over the same units, so the two means are comparable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from sae.core.files import finite_or_none


@dataclass
class SplitScore:
    """Correlation of simulated with true activations, pooled over one split's records (n tokens)."""

    n: int
    spearman: float
    pearson: float


@dataclass
class Simulated:
    """One explanation's simulation of a unit's records: own (explanation_of == unit) or control."""

    explanation_of: int
    status: str  # "ok" | "failed"
    simulator_method: Optional[str] = None  # the method actually used: logprobs | integers | token_pattern
    splits: dict[str, SplitScore] = field(default_factory=dict)
    reason: Optional[str] = None


@dataclass
class UnitResult:
    unit: int
    method: str  # the explainer kind that produced it
    explainer: str
    density: float
    max_activation: float
    status: str  # "ok" when explained and simulated with its own explanation
    explanation: Optional[str] = None
    reason: Optional[str] = None
    own: Optional[Simulated] = None
    control: Optional[Simulated] = None

    def score(self, role: str, split: str, metric: str) -> float:
        sim = self.own if role == "own" else self.control
        if sim is None or sim.status != "ok" or split not in sim.splits:
            return math.nan
        return getattr(sim.splits[split], metric)

    def to_json(self) -> dict:
        return finite_or_none(asdict(self))


@dataclass
class Interval:
    """Mean over units with a bootstrap 95% interval."""

    mean: float
    ci95: list[float]
    n_units: int


@dataclass
class SplitSummary:
    spearman: Interval
    pearson: Interval
    control_spearman: Interval
    control_pearson: Interval


@dataclass
class MethodSummary:
    explainer: str
    n_units: int
    n_failed: int
    failed: dict[str, Optional[str]]  # unit -> reason
    simulator_methods: list[str]
    splits: dict[str, SplitSummary]
