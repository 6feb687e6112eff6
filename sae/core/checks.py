"""Config validation helpers: one-line checks in `__post_init__`, and typed objects from Hydra's configs.

A dataclass config checks its own ranges in `__post_init__`; `to_objects` builds it from an OmegaConf
node so that those checks run at start-up and their message reaches the user unwrapped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

from sae.core.errors import ConfigError

T = TypeVar("T")


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


def require_finite(tree: Any, prefix: str = "") -> None:
    """Every float in `tree` (a config as plain dicts and lists, nested) is finite: inf or nan names its key.

    No setting means anything at inf or nan, and a range check such as `lr > 0` lets inf through."""
    if isinstance(tree, float) and not math.isfinite(tree):
        key = prefix or "value"
        raise ConfigError(f"{key}={tree}: settings must be finite numbers; set {key} to a finite value.")
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            require_finite(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            require_finite(value, f"{prefix}[{i}]")


def require_directory_path(path: str | Path, setting: str, shown: str | None = None) -> None:
    """`path` is, or can become, a directory: nothing on the way to it is a regular file."""
    path = Path(path).expanduser()
    for parent in (path, *path.parents):
        if parent.exists():
            require(
                parent.is_dir(),
                f"{setting}={shown or path}: {parent} is a file, not a directory; set {setting} to a directory "
                "(or a path where one can be created).",
            )
            return


def to_objects(cfg: DictConfig, cls: type[T]) -> T:
    """Build the dataclass (running its checks); re-raise OmegaConf's wrapped error as our own message.

    Every float of the config, nested settings included, must be finite (`require_finite`), before any
    dataclass check sees it."""
    if isinstance(cfg, DictConfig):
        try:
            require_finite(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
        except ConfigError:
            raise
        except Exception:  # an unresolvable value: the dataclass build below names it
            pass
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


OUTPUT_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def output_dir_problem(args: list[str], defaults: dict[str, str]) -> str | None:
    """An output directory that cannot be created, found before Hydra starts (which fails creating it with a
    traceback). `defaults`: each key's configured value; its literal start (before any `${`) is checked
    when the command line does not set the key."""
    given = {}
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key in OUTPUT_DIR_KEYS:
            given[key] = value.strip("'\"")
    for key in OUTPUT_DIR_KEYS:
        value = given.get(key, defaults.get(key))
        if not value:
            continue
        literal = value.split("${", 1)[0]
        if literal != value and not literal.endswith("/"):  # the interpolation completes the last name
            literal = literal.rsplit("/", 1)[0] if "/" in literal else ""
        if not literal or "," in literal:
            continue
        try:
            require_directory_path(literal, key, shown=value)
        except ConfigError as exc:
            return str(exc)
    return None
