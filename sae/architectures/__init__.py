"""SAE architectures by name: each one module with its parameters, encode, loss, init, settings, checks and
export mapping.

To add one: subclass `SparseAutoencoder` (sae/architectures/base.py) in a new module, list it in
`ARCHITECTURES`, and add a `conf/sae/<configuration>.yaml` with `architecture: <name>`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sae.architectures.base import LossTerms, SparseAutoencoder, geometric_median
from sae.architectures.batchtopk import BatchTopKSAE, BatchTopKSettings
from sae.architectures.jumprelu import JumpReLUSAE, JumpReLUSettings
from sae.architectures.matryoshka import MatryoshkaSAE, MatryoshkaSettings
from sae.architectures.relu import ReLUSAE, ReLUSettings
from sae.architectures.topk import TopKSAE, TopKSettings
from sae.core.errors import ConfigError

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.name: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)
}


# cfg.json files written before architectures were recorded hold a ReLU SAE.
LEGACY_ARCHITECTURE = "relu"


class UnknownArchitecture(ValueError):
    pass


def architecture_of(cfg: dict) -> str:
    """The architecture a saved SAE's cfg.json names."""
    return cfg.get("architecture", LEGACY_ARCHITECTURE)


def get_architecture(name: str) -> type[SparseAutoencoder]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitecture(f"unknown SAE architecture {name!r}: known ones are {', '.join(ARCHITECTURES)}.") from None


def build_settings(name: str, settings: dict[str, Any] | None, k: int | None = None) -> Any:
    """The architecture's typed settings from a plain dict (config or cfg.json); bad keys or types name the field."""
    cls = get_architecture(name)
    values = dict(settings or {})
    if cls.sparsity_knob == "k":
        values["k"] = k if k is not None else values.get("k")
    schema = OmegaConf.structured(cls.Settings)
    try:
        merged = OmegaConf.merge(schema, values)
    except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError
        known = ", ".join(schema.keys())
        field_name = getattr(exc, "full_key", None)
        where = f"sae.settings.{field_name}" if field_name else "sae.settings"
        raise ConfigError(f"{where} for {name}: {str(exc).splitlines()[0]} (its settings: {known}).") from None
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        raise ConfigError(f"sae.settings for {name}: {str(exc).splitlines()[0]}") from None


def build_sae(name: str, d_in: int, n_features: int, settings: Any = None, k: int | None = None) -> SparseAutoencoder:
    """The one constructor of an SAE: architecture `name` with its settings, typed already or a plain dict
    (a config or cfg.json) checked field by field."""
    cls = get_architecture(name)
    if not isinstance(settings, cls.Settings):
        settings = build_settings(name, settings, k)
    return cls(d_in, n_features, settings)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKSAE",
    "BatchTopKSettings",
    "JumpReLUSAE",
    "JumpReLUSettings",
    "LossTerms",
    "MatryoshkaSAE",
    "MatryoshkaSettings",
    "ReLUSAE",
    "ReLUSettings",
    "SparseAutoencoder",
    "TopKSAE",
    "TopKSettings",
    "UnknownArchitecture",
    "architecture_of",
    "build_sae",
    "build_settings",
    "geometric_median",
    "get_architecture",
]
