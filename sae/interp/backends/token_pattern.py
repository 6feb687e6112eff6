"""An explainer/simulator pair with no LLM, in the spirit of Neuron to Graph (Foote et al. 2023).

The explanation lists the tokens, with their short preceding context where that matters, on which
the unit fires in its top records, each with the unit's mean (max-normalised) activation there.
The simulator predicts a token's activation by matching those patterns (longest context first).
It is the offline baseline every LLM backend is compared with, scored by the same code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sae.core.checks import require
from sae.interp.backends.base import ExplainerConfig, Explanation, Simulation
from sae.interp.records import Record, UnitRecords


@dataclass
class TokenPatternConfig(ExplainerConfig):
    kind: str = "token_pattern"
    max_patterns: int = 20  # patterns kept per explanation
    context_tokens: int = 1  # preceding tokens a pattern may require

    def __post_init__(self) -> None:
        require(self.max_patterns >= 1, f"explainer.max_patterns={self.max_patterns} must be >= 1.")
        require(self.context_tokens >= 0, f"explainer.context_tokens={self.context_tokens} must be >= 0.")

    @property
    def identity(self) -> str:
        return f"token_pattern(max={self.max_patterns},ctx={self.context_tokens})"


class TokenPatternBackend:
    def __init__(self, cfg: TokenPatternConfig):
        self.cfg = cfg
        self.identity = cfg.identity

    def simulator_identity(self) -> str:
        return self.identity

    def explain(self, records: UnitRecords) -> Explanation:
        k = self.cfg.context_tokens
        top = max((max(r.acts) for r in records.explain), default=0.0) or 1.0
        stats: dict[tuple, list[float]] = defaultdict(list)
        for r in records.explain:
            tokens = list(r.prefix) + list(r.tokens)
            offset = len(r.prefix)
            for i, a in enumerate(r.acts):
                j = i + offset
                value = max(0.0, a) / top
                stats[((), tokens[j])].append(value)
                if k:
                    stats[(tuple(tokens[max(0, j - k) : j]), tokens[j])].append(value)
        firing = {tok for (ctx, tok), vals in stats.items() if not ctx and max(vals) > 0}
        candidates = []
        for (ctx, tok), vals in stats.items():
            if tok not in firing or max(vals) <= 0:
                continue
            mean = sum(vals) / len(vals)
            if ctx:
                # Context matters only when the token alone is an unreliable predictor (N2G's pruning idea).
                alone = stats[((), tok)]
                if abs(mean - sum(alone) / len(alone)) < 0.25 or len(vals) == len(alone):
                    continue
            candidates.append((mean * sum(v > 0 for v in vals), mean, list(ctx), tok))
        candidates.sort(key=lambda c: -c[0])
        patterns = [[ctx, tok, round(mean, 4)] for _, mean, ctx, tok in candidates[: self.cfg.max_patterns]]
        text = "; ".join((f"{''.join(ctx)!r}→" if ctx else "") + f"{tok!r} ({w:.2f})" for ctx, tok, w in patterns)
        return Explanation(text=text or "(never fires)", patterns=patterns)

    def simulate(self, explanation: Explanation, records: Sequence[Record]) -> Simulation:
        with_ctx = {(tuple(c), t): w for c, t, w in explanation.patterns or [] if c}
        alone = {t: w for c, t, w in explanation.patterns or [] if not c}
        lengths = sorted({len(c) for c, _ in with_ctx}, reverse=True)
        out = []
        for r in records:
            tokens = list(r.prefix) + list(r.tokens)
            offset = len(r.prefix)
            preds = []
            for i in range(len(r.tokens)):
                j = i + offset
                value = None
                for n in lengths:
                    value = with_ctx.get((tuple(tokens[max(0, j - n) : j]), tokens[j]))
                    if value is not None:
                        break
                preds.append(value if value is not None else alone.get(tokens[j], 0.0))
            out.append(preds)
        return Simulation(predictions=out, method="token_pattern")
