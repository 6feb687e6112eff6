"""What every backend returns, and the error it raises when a unit cannot be done."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol

from sae.interp.prompts import MAX_VALUE, quantise
from sae.interp.records import Record, UnitRecords


class BackendError(RuntimeError):
    """A unit could not be explained or simulated; the message is the reason stored with it."""


@dataclass
class ExplainerConfig:
    """What every explainer's settings share. `kind` names the backend (a key of sae.interp.backends.BACKENDS)."""

    kind: str = ""

    @property
    def identity(self) -> str:
        """What distinguishes this explainer's results in the store (never a secret)."""
        return self.kind

    @property
    def workers(self) -> int:
        """Units explained and simulated at once."""
        return 1

    def check_ready(self) -> None:
        """Start-up checks that need no network and no model: fail before any work is done."""


@dataclass
class Explanation:
    text: str
    # token_pattern only: [[preceding tokens...], token, weight] — what its simulator matches.
    patterns: Optional[list] = None
    usage: dict = field(default_factory=dict)


@dataclass
class Simulation:
    predictions: list[list[float]]  # one list per record, one value per token
    method: str  # "logprobs" | "integers" | "token_pattern"
    usage: dict = field(default_factory=dict)


class Backend(Protocol):
    identity: str

    def explain(self, records: UnitRecords) -> Explanation: ...

    def simulator_identity(self) -> str: ...

    def simulate(self, explanation: Explanation, records: Sequence[Record]) -> Simulation: ...


def prompt_records(records: UnitRecords, n: int) -> list[tuple[list[str], list[int]]]:
    """The top records the explainer sees, quantised to 0..10 against the unit's maximum."""
    top = max((max(r.acts) for r in records.explain), default=0.0)
    return [(r.tokens, quantise(r.acts, top)) for r in records.explain[:n]]


def expected_value(logprobs: Mapping[str, float]) -> Optional[float]:
    """Bills's all-at-once readout: renormalise the probabilities of "0".."10" and take the mean value.

    None when none of the values is among the given log-probabilities.
    """
    probs = {}
    for text, lp in logprobs.items():
        s = text.strip()
        if s.isdigit() and int(s) <= MAX_VALUE and str(int(s)) == s:
            probs[int(s)] = probs.get(int(s), 0.0) + math.exp(lp)
    total = sum(probs.values())
    if total <= 0:
        return None
    return sum(v * p for v, p in probs.items()) / total


def add_usage(total: dict, usage: Mapping[str, int] | None) -> None:
    for k, v in (usage or {}).items():
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v
