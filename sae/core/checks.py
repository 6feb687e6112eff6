"""Config validation helpers: one-line checks in `__post_init__`, and typed objects from Hydra's configs.

A dataclass config checks its own ranges in `__post_init__`; `to_objects` builds it from an OmegaConf
node so that those checks run at start-up and their message reaches the user unwrapped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

from sae.core.errors import ConfigError

T = TypeVar("T")


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


def to_objects(cfg: DictConfig, cls: type[T]) -> T:
    """Build the dataclass (running its checks); re-raise OmegaConf's wrapped error as our own message."""
    try:
        return OmegaConf.to_object(cfg) if OmegaConf.get_type(cfg) is cls else cls(**OmegaConf.to_object(cfg))
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf wraps __post_init__ errors
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        raise


def config_from_dict(cls: type[T], saved: Optional[Mapping[str, Any]], overrides: Optional[Mapping[str, Any]] = None) -> T:
    """`cls` from a saved dict (unknown keys dropped), with `overrides` on top; type-checked by OmegaConf."""
    known = {f.name for f in fields(cls)}
    base = {k: v for k, v in dict(saved or {}).items() if k in known}
    unknown = [k for k in (overrides or {}) if k not in known]
    if unknown:
        raise ConfigError(f"{cls.__name__}: no field(s) {unknown}; known: {sorted(known)}.")
    merged = OmegaConf.merge(OmegaConf.structured(cls), base, dict(overrides or {}))
    return to_objects(merged, cls)
