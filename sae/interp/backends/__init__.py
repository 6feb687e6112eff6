"""Explainer/simulator backends: each explains a unit from its records and simulates records from an explanation.

`build_backend(cfg)` picks one from `explainer.kind`. Every failure a backend can meet (no key,
unreachable endpoint, unknown model, malformed or truncated completion) is raised as
`BackendError` with a message that says what to fix; the pipeline marks that unit failed and goes on.
"""

from __future__ import annotations

from sae.interp.backends.base import Backend, BackendError, Explanation, Simulation
from sae.interp.config import ExplainerConfig


def build_backend(cfg: ExplainerConfig) -> Backend:
    if cfg.kind == "token_pattern":
        from sae.interp.backends.token_pattern import TokenPatternBackend

        return TokenPatternBackend(cfg)
    if cfg.kind == "local":
        from sae.interp.backends.local import LocalBackend

        return LocalBackend(cfg)
    from sae.interp.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(cfg)


__all__ = ["Backend", "BackendError", "Explanation", "Simulation", "build_backend"]
