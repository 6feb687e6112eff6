"""Rebuilding a run's settings from a saved SAE's cfg.json, and the shared atomic/strict-JSON writers."""

from __future__ import annotations

import json
import math

import pytest

from sae.core.checks import config_from_dict
from sae.core.errors import ConfigError
from sae.core.files import atomic_write_json, finite_or_none
from sae.core.tracking import LoggerConfig
from sae.formats.run_config import run_configs
from sae.text.sources import DataConfig

SAVED = {
    "d_in": 8,
    "n_features": 16,
    "model": "embedded:smollm2",
    "layer": 2,
    "hook": "hook_mlp_out",
    "train_config": {
        "model": {"name": "embedded:smollm2", "alias": "smollm2", "layer": 2, "hook": "hook_mlp_out", "dtype": "float32"},
        "data": {"source": "wiki_offline", "alias": "wiki", "context_length": 64, "a_field_from_another_version": 1},
        "activations": {"n_tokens": 20000},
        "logger": {"kind": "csv", "project": "p"},
        "sae": {"seed": 3},
        "run_name": "r",
    },
}


def test_run_configs_from_cfg_json_with_overrides():
    run = run_configs(SAVED, {"model": {"dtype": "bfloat16"}, "data": {}, "logger": {"kind": "wandb"}})
    assert run.model.layer == 2 and run.model.dtype == "bfloat16"
    assert (
        run.data.context_length == 64 and run.data.holdout_every == DataConfig.__dataclass_fields__["holdout_every"].default
    )  # unknown key dropped
    assert run.activations.n_tokens == 20000
    assert run.logger == LoggerConfig(kind="wandb", project="p")
    assert (run.seed, run.run_name) == (3, "r")


def test_an_sae_saved_without_training_config():
    old = {k: v for k, v in SAVED.items() if k != "train_config"}
    with pytest.raises(ConfigError, match=r"no train_config.data.*\+data.source"):
        run_configs(old)
    run = run_configs(old, {"data": {"source": "wiki_offline", "alias": "wiki"}})
    assert (run.model.name, run.model.layer, run.model.hook) == ("embedded:smollm2", 2, "hook_mlp_out")


def test_bad_values_and_fields_are_named():
    with pytest.raises(ConfigError, match="model.layer=-1"):
        run_configs(SAVED, {"model": {"layer": -1}})
    with pytest.raises(ConfigError, match=r"no field\(s\) \['colour'\]"):
        config_from_dict(LoggerConfig, {}, {"colour": "red"})


def test_strict_json_written_atomically(tmp_path):
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, 3)}
    assert finite_or_none(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, 3]}
    path = atomic_write_json(tmp_path / "x" / "out.json", value)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, 3]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left behind
