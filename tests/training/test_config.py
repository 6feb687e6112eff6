"""Bad input stops at start-up with a message naming the field and the fix."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from support.runs import REPO, TINY, train_tiny

from sae.core.checks import to_objects
from sae.core.errors import ConfigError
from sae.training.config import TrainConfig, register_configs

register_configs()


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_default_config_composes_to_typed_objects():
    cfg = to_objects(_compose(), TrainConfig)
    assert cfg.model.name == "embedded:smollm2" and cfg.data.source == "packaged" and cfg.data.name == "mixed"
    assert cfg.sae.total_steps == cfg.sae.tokens // cfg.sae.batch_size


def test_slides_model_and_pile_compose():
    cfg = to_objects(_compose("model=distilgpt2", "data=pile"), TrainConfig)
    assert (cfg.model.name, cfg.model.layer, cfg.data.path) == ("distilgpt2", 5, "monology/pile-uncopyrighted")


@pytest.mark.parametrize(
    "override, words",
    [
        ("sae.expansion=0", ["sae.expansion", "between 1 and"]),
        ("sae.tokens=100", ["sae.tokens", "smaller than one batch", "sae.batch_size"]),
        ("sae.dtype=float16", ["sae.dtype", "bf16"]),
        ("data.context_length=1", ["data.context_length"]),
        ("logger.mode=sometimes", ["logger.mode"]),
    ],
)
def test_bad_values_name_the_field(override, words):
    with pytest.raises(ConfigError) as err:
        to_objects(_compose(override), TrainConfig)
    for word in words:
        assert word in str(err.value)


def test_wrong_type_fails_at_compose_with_the_key():
    with pytest.raises(Exception) as err:
        _compose("sae.expansion=eight")
    assert "sae.expansion" in str(err.value)
    with pytest.raises(Exception) as err:
        _compose("sae.no_such_field=1")
    assert "no_such_field" in str(err.value)


def test_train_script_reports_bad_input_and_exits(tmp_path, activation_cache_dir):
    proc = train_tiny(tmp_path / "run", activation_cache_dir, "sae.expansion=0", check=False)
    assert proc.returncode == 2
    assert "config error: sae.expansion=0" in proc.stderr
    proc = train_tiny(tmp_path / "run2", activation_cache_dir, "data=local", "data.files=[/nonexistent/corpus.txt]", check=False)
    assert proc.returncode == 2
    assert "data.files" in proc.stderr and "/nonexistent/corpus.txt" in proc.stderr
    assert not (tmp_path / "run2" / "sae").exists()


def test_resolved_config_has_readable_run_name():
    cfg = _compose(*TINY)
    name = OmegaConf.select(cfg, "run_name")
    label, digest = name.rsplit("-", 1)
    assert label == "anthropic_2023_relu_x2_l1=5e-3_lr=1e-3_tok=51.2k_seed=0" and len(digest) == 8
    # Values that one significant digit would merge keep distinct names.
    names = {OmegaConf.select(_compose(*TINY, f"sae.lr={lr}"), "run_name") for lr in ("2.5e-4", "3.5e-4", "1.5e-4", "1e-4")}
    assert {n.split("_lr=")[1].split("_")[0] for n in names} == {"2.5e-4", "3.5e-4", "1.5e-4", "1e-4"}
    # Logging cadence is not part of the identity; a training setting is.
    assert OmegaConf.select(_compose(*TINY, "trainer.log_every_n_steps=3"), "run_name") == name
    assert OmegaConf.select(_compose(*TINY, "sae.betas=[0.9,0.999]"), "run_name") != name


def test_devices_and_nodes_count_the_processes_of_one_run():
    cfg = to_objects(_compose("trainer.devices=4", "trainer.num_nodes=2"), TrainConfig)
    assert cfg.trainer.processes == 8
    for bad in ("trainer.devices=0", "trainer.num_nodes=0"):
        with pytest.raises(ConfigError, match=bad):
            to_objects(_compose(bad), TrainConfig)
