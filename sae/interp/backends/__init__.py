"""Explainer/simulator backends: each explains a unit from its records and simulates records from an explanation.

One entry per `explainer.kind` in `BACKENDS`: the backend's typed settings and its class, both in the
backend's module. Every failure a backend can meet (no key, unreachable endpoint, unknown model,
malformed or truncated completion) is raised as `BackendError` with a message that says what to fix;
the pipeline marks that unit failed and goes on.

To add a backend: a module here with its settings dataclass (a subclass of `ExplainerConfig`) and its
class, one entry in `BACKENDS`, and a `conf/explainer/<kind>.yaml` that names its schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sae.core.checks import config_from_dict
from sae.core.errors import ConfigError
from sae.interp.backends.base import Backend, BackendError, ExplainerConfig, Explanation, Simulation
from sae.interp.backends.local import LocalBackend, LocalConfig
from sae.interp.backends.openai_backend import OpenAIBackend, OpenAIConfig
from sae.interp.backends.token_pattern import TokenPatternBackend, TokenPatternConfig

BACKENDS: dict[str, tuple[type[ExplainerConfig], type]] = {
    "token_pattern": (TokenPatternConfig, TokenPatternBackend),
    "local": (LocalConfig, LocalBackend),
    "openai": (OpenAIConfig, OpenAIBackend),
}


def explainer_config(value: ExplainerConfig | Mapping[str, Any] | DictConfig | None) -> ExplainerConfig:
    """The typed settings of the backend `value["kind"]` names (token_pattern when empty); bad keys name the field."""
    if isinstance(value, ExplainerConfig):
        return value
    raw = OmegaConf.to_container(value) if isinstance(value, DictConfig) else dict(value or {})
    kind = raw.get("kind", "token_pattern")
    if kind not in BACKENDS:
        raise ConfigError(f"explainer.kind={kind!r}: choose one of {tuple(BACKENDS)}.")
    return config_from_dict(BACKENDS[kind][0], {}, raw)


def build_backend(cfg: ExplainerConfig) -> Backend:
    return BACKENDS[cfg.kind][1](cfg)


def check_ready(cfg: ExplainerConfig) -> None:
    cfg.check_ready()


def register_explainer_configs() -> None:
    """One schema per backend in the `explainer` group: conf/explainer/<kind>.yaml names `<kind>_schema`."""
    for kind, (cls, _) in BACKENDS.items():
        ConfigStore.instance().store(group="explainer", name=f"{kind}_schema", node=cls)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "ExplainerConfig",
    "Explanation",
    "Simulation",
    "build_backend",
    "check_ready",
    "explainer_config",
    "register_explainer_configs",
]
