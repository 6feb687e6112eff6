"""The training run's settings, rebuilt from a saved SAE's `cfg.json` (its `train_config`).

Evaluation, interpretability and the sweep report all need the language model, data, activation
and logger settings an SAE was trained with. They are rebuilt here, one way: keys a newer or older
version of the project does not know are dropped, missing ones take today's defaults, and the
dataclass checks run, so a bad value fails naming its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from sae.activations.config import ActivationsConfig
from sae.core.checks import config_from_dict
from sae.core.errors import ConfigError
from sae.core.tracking import LoggerConfig
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig


@dataclass
class RunConfigs:
    """What an SAE was trained on, and how its run logged."""

    model: ModelConfig
    data: DataConfig
    activations: ActivationsConfig
    logger: LoggerConfig
    seed: int = 0
    run_name: Optional[str] = None


SECTIONS = {"model": ModelConfig, "data": DataConfig, "activations": ActivationsConfig, "logger": LoggerConfig}


def run_configs(sae_cfg: Mapping[str, Any], overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> RunConfigs:
    """The run's model/data/activations/logger settings from cfg.json, with per-section overrides on top."""
    train = dict(sae_cfg.get("train_config") or {})
    overrides = overrides or {}
    out = {}
    for name, cls in SECTIONS.items():
        saved = dict(train.get(name) or {})
        if name == "model" and not saved and "model" in sae_cfg:  # an SAE saved without its training config
            saved = {"name": sae_cfg["model"], "alias": "model", "layer": sae_cfg["layer"], "hook": sae_cfg["hook"]}
        if name == "data" and not saved and not overrides.get("data"):
            raise ConfigError(
                "cfg.json has no train_config.data: give the evaluation text, e.g. +data.source=wiki_offline +data.alias=wiki."
            )
        out[name] = config_from_dict(cls, saved, overrides.get(name))
    seed = int((train.get("sae") or {}).get("seed", 0))
    return RunConfigs(**out, seed=seed, run_name=train.get("run_name"))
