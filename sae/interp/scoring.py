"""Scores: correlation between simulated and true activations, pooled over all tokens of a split's records.

Bills et al. used Pearson; Anthropic used Spearman over 60 records x 9 tokens = 540 predictions.
Both are reported, per unit and per split, and summarised across units as a mean with a bootstrap
95% confidence interval (scipy.stats.bootstrap, percentile method).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from scipy import stats

from sae.interp.results import Interval, SplitScore

if TYPE_CHECKING:
    from sae.interp.records import Record, UnitRecords

T = TypeVar("T")


def _top_and_random(groups: Mapping[str, Sequence[T]]) -> list[T]:
    top, random = groups["top"], groups["random"]
    return list(top) + list(random[: len(top) or len(random)])


# How each split (interp.splits) pools a unit's record groups ("top", "random", "quantiles"); the same rule picks
# the records and their predictions, so the two always line up.
SPLITS: dict[str, Callable[[Mapping[str, Sequence[T]]], list[T]]] = {
    "top_and_random": _top_and_random,  # the scored top records and as many random ones
    "random_only": lambda groups: list(groups["random"]),
    "quantiles": lambda groups: list(groups["quantiles"]),
}


def split_records(records: UnitRecords, split: str) -> list[Record]:
    return SPLITS[split]({"top": records.top, "random": records.random, "quantiles": records.quantiles})


def correlations(true: Sequence[float], predicted: Sequence[float]) -> SplitScore:
    """Pooled Spearman and Pearson.

    A constant prediction carries no information about which tokens fire: it scores 0 (not NaN, which
    would drop the unit from one mean but not the other). Only when the true activations are constant
    (the unit silent on every scored token) is the correlation undefined (NaN), for every explanation alike.
    """
    t, p = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    if len(t) != len(p):
        raise ValueError(f"{len(t)} true activations but {len(p)} predictions")
    if len(t) < 2 or np.ptp(t) == 0:
        return SplitScore(n=int(len(t)), spearman=math.nan, pearson=math.nan)
    if np.ptp(p) == 0:
        return SplitScore(n=int(len(t)), spearman=0.0, pearson=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SplitScore(
            n=int(len(t)), spearman=float(stats.spearmanr(t, p).statistic), pearson=float(stats.pearsonr(t, p).statistic)
        )


def score_split(records: Sequence[Record], predictions: Sequence[Sequence[float]]) -> SplitScore:
    true = [a for r in records for a in r.acts]
    pred = [v for p in predictions for v in p]
    return correlations(true, pred)


def summarise(values: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean over units (NaNs left out) with a bootstrap 95% interval; no interval for fewer than 2 units."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    mean = float(v.mean()) if len(v) else math.nan
    ci95 = [math.nan, math.nan]
    if len(v) >= 2 and np.ptp(v) > 0:
        res = stats.bootstrap(
            (v,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=0.95,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        ci95 = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    elif len(v) >= 2:
        ci95 = [float(v[0]), float(v[0])]
    return Interval(mean=mean, ci95=ci95, n_units=int(len(v)))
