"""Explainer/simulator backends: each explains a unit from its records and simulates records from an explanation.

`build_backend(cfg)` picks one from `explainer.kind`. Every failure a backend can meet (no key,
unreachable endpoint, unknown model, malformed or truncated completion) is raised as
`BackendError` with a message that says what to fix; the pipeline marks that unit failed and goes on.
"""

from __future__ import annotations

from sae.config import ConfigError
from sae.interp.backends.base import Backend, BackendError, Explanation, Simulation
from sae.interp.config import ExplainerConfig


def check_ready(cfg: ExplainerConfig) -> None:
    """Start-up checks that need no network and no model: fail before any work is done."""
    import os

    if cfg.kind == "openai" and cfg.api_key_env is not None and not os.environ.get(cfg.api_key_env):
        raise ConfigError(
            f"explainer=openai needs an API key: the environment variable {cfg.api_key_env} "
            f"(explainer.api_key_env) is not set. Export it, or set explainer.api_key_env=null "
            f"for a server that needs no key."
        )


def build_backend(cfg: ExplainerConfig) -> Backend:
    if cfg.kind == "token_pattern":
        from sae.interp.backends.token_pattern import TokenPatternBackend

        return TokenPatternBackend(cfg)
    if cfg.kind == "local":
        from sae.interp.backends.local import LocalBackend

        return LocalBackend(cfg)
    from sae.interp.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(cfg)


__all__ = ["Backend", "BackendError", "Explanation", "Simulation", "build_backend", "check_ready"]
