"""Bad user input stops at start-up with one line naming the problem and the fix, never a traceback.

1. Every numeric field of every config group set to 0 and to -1 (in-process, through the same
   dataclass checks that `train.py` / `evaluate.py` run at start-up): the fields are discovered from
   the dataclasses, so a new numeric setting without a range check fails here.
2. A catalogue of bad inputs run as a user would (`python train.py ...`, `python evaluate.py ...`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from support.disks import small_filesystem
from support.locks import lock_held_elsewhere
from support.runs import REPO, TINY, run_script, script_env, train_tiny

from sae.core.checks import to_objects
from sae.core.errors import ConfigError
from sae.evaluation.config import EvaluateConfig, MetricsConfig
from sae.interp.backends import BACKENDS
from sae.interp.config import InterpConfig
from sae.training.config import TrainConfig, register_configs

register_configs()

# Fields where 0 is a valid value (and -1 still is not).
ZERO_OK = {
    "model.layer",
    "sae.betas",
    "sae.l1_coefficient",
    "sae.l1_warmup_fraction",
    "sae.lr_decay_fraction",
    "sae.seed",
    "trainer.eval_every_n_steps",
    "trainer.checkpoint_every_minutes",  # 0: by steps only
    "trainer.eval_tokens",
    "trainer.threads",
    "trainer.heldout_tokens",
    "metrics.ce_tokens",
    "metrics.heldout_tokens",
    "metrics.density_tokens",
    "metrics.absorption_words",  # 0: no absorption measured
    "seed",
    "interp.seed",
    "interp.n_score_top",
    "interp.n_score_random",
    "explainer.max_retries",
    "explainer.temperature",
    "explainer.context_tokens",
    "sae.settings.aux_coefficient",
    "sae.settings.threshold_momentum",  # 0: AuxK off; no threshold averaging
}
# Every field of these may be 0 (and -1 too: e.g. coefficients of a sum); none today.
SIGNED_OK: set[str] = set()


def _numeric_kind(tp) -> str | None:
    """ "scalar" for int/float (optional too), "list" for list[int]/list[float], else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp in (int, float) or (typing.get_origin(tp) is typing.Union and len(args) == 1 and args[0] in (int, float)):
        return "scalar"
    if typing.get_origin(tp) is list and typing.get_args(tp) and typing.get_args(tp)[0] in (int, float):
        return "list"
    return None


def numeric_fields(cls, prefix: str) -> list[tuple[str, str]]:
    """(dotted key, kind) for every numeric field of `cls` and of its nested dataclasses."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, key + ".")
        elif _numeric_kind(tp):
            out.append((key, _numeric_kind(tp)))
    return out


def _train_cfg():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(TINY))


TRAIN_GROUPS = [(g, hint) for g, hint in typing.get_type_hints(TrainConfig).items() if dataclasses.is_dataclass(hint)]
TRAIN_CASES = [key for group, cls in TRAIN_GROUPS for key, _ in numeric_fields(cls, f"{group}.")]
OTHER = [("metrics", MetricsConfig), ("interp", InterpConfig), *(("explainer", cls) for cls, _ in BACKENDS.values())]
OTHER_CASES = [
    pytest.param(cls, key, id=f"{cls.__name__}:{key}") for name, cls in OTHER for key, _ in numeric_fields(cls, f"{name}.")
]
EVAL_CASES = [key for key, _ in numeric_fields(EvaluateConfig, "") if "." not in key]


def _bad_values(key: str, kind: str) -> list:
    values = [] if key in SIGNED_OK else [-1]
    if key not in ZERO_OK and key not in SIGNED_OK:
        values.insert(0, 0)
    return [[v, v] if key == "sae.betas" else [v] for v in values] if kind == "list" else values


def _expect_named_error(build, key: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert key in str(err.value), f"{key}={value}: the message does not name the field: {err.value}"
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def train_cfg():
    return _train_cfg()


def test_catalogue_covers_every_group():
    assert {
        "model.layer",
        "data.context_length",
        "activations.shard_tokens",
        "sae.lr",
        "sae.resample.n_inputs",
        "trainer.log_every_n_steps",
        "trainer.density_window_steps",
        "trainer.devices",
    } <= set(TRAIN_CASES)
    assert {"metrics.ce_batch_size", "interp.batch_size", "explainer.sim_batch_size"} <= {c.values[1] for c in OTHER_CASES}
    assert "seed" in EVAL_CASES


@pytest.mark.parametrize("key", TRAIN_CASES)
def test_train_numeric_field_zero_and_negative(train_cfg, key):
    group = key.split(".")[0]
    cls = dict(TRAIN_GROUPS)[group]
    field_kind = dict(numeric_fields(cls, f"{group}."))[key]
    for value in _bad_values(key, field_kind):
        cfg = train_cfg.copy()
        OmegaConf.update(cfg, key, value, merge=False)
        _expect_named_error(lambda: to_objects(cfg, TrainConfig), key, value)
    if key in ZERO_OK:  # and 0 is accepted there
        cfg = train_cfg.copy()
        OmegaConf.update(cfg, key, [0, 0] if field_kind == "list" else 0, merge=False)
        to_objects(cfg, TrainConfig)


def _architecture_cases() -> list[tuple[str, str]]:
    from sae.architectures import ARCHITECTURES

    return [
        (name, key)
        for name, cls in ARCHITECTURES.items()
        for key, _ in numeric_fields(cls.Settings, "sae.settings.")
        if key != "sae.settings.k"
    ]  # k is sae.k, checked with the sae group


@pytest.mark.parametrize("architecture, key", _architecture_cases())
def test_architecture_numeric_setting_zero_and_negative(architecture, key):
    from sae.architectures import ARCHITECTURES, build_settings

    k = 32 if ARCHITECTURES[architecture].sparsity_knob == "k" else None
    field_name = key.rsplit(".", 1)[1]
    for value in _bad_values(key, "scalar"):
        _expect_named_error(lambda: build_settings(architecture, {field_name: value}, k), key, value)
    if key in ZERO_OK:
        build_settings(architecture, {field_name: 0}, k)


@pytest.mark.parametrize("cls,key", OTHER_CASES)
def test_evaluate_and_interp_numeric_field_zero_and_negative(cls, key):
    name, field_name = key.split(".", 1)
    base = {}
    kind = dict(numeric_fields(cls, f"{name}."))[key]
    for value in _bad_values(key, kind):
        _expect_named_error(lambda: cls(**base, **{field_name: value}), key, value)
    if key in ZERO_OK:
        cls(**base, **{field_name: 0})


@pytest.mark.parametrize("key", EVAL_CASES)
def test_evaluate_top_level_numeric_field(key):
    for value in _bad_values(key, "scalar"):
        _expect_named_error(lambda: EvaluateConfig(sae_path="x", **{key: value}), key, value)


# ---------------------------------------------------------------- inf and nan, every float setting


def _is_float(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is float or (typing.get_origin(tp) in (typing.Union, list) and args == [float])


def float_fields(cls, prefix: str) -> list[str]:
    """Dotted keys of every float (optional, or list of floats) field of `cls` and its nested dataclasses."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += float_fields(hints[f.name], f"{prefix}{f.name}.")
        elif _is_float(hints[f.name]):
            out.append(f"{prefix}{f.name}")
    return out


def _architecture_float_cases() -> list[str]:
    from sae.architectures import ARCHITECTURES

    return sorted({key for cls in ARCHITECTURES.values() for key in float_fields(cls.Settings, "sae.settings.")})


TRAIN_FLOATS = [key for group, cls in TRAIN_GROUPS for key in float_fields(cls, f"{group}.")] + _architecture_float_cases()


def _evaluate_float_cases() -> list[tuple[str, str]]:
    from sae.dashboard.config import DashboardConfig

    groups = [("metrics", MetricsConfig, None), ("interp", InterpConfig, None), ("dashboard", DashboardConfig, None)]
    groups += [("explainer", cls, kind) for kind, (cls, _) in BACKENDS.items()]
    return [(key, kind) for name, cls, kind in groups for key in float_fields(cls, f"{name}.")]


EVALUATE_FLOATS = _evaluate_float_cases()


def _value_for(key: str, value: float):
    return [0.9, value] if key == "sae.betas" else value


def test_the_float_catalogue_covers_every_group():
    assert {"sae.lr", "sae.l1_coefficient", "sae.betas", "sae.resample.encoder_scale"} <= set(TRAIN_FLOATS)
    assert any(k.startswith("sae.settings.") for k in TRAIN_FLOATS)
    assert {"dashboard.steering_multiple", "explainer.temperature"} <= {k for k, _ in EVALUATE_FLOATS}


@pytest.mark.parametrize("key", TRAIN_FLOATS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_train_float_setting_rejects_inf_and_nan(train_cfg, key, value):
    cfg = train_cfg.copy()
    OmegaConf.update(cfg, key, _value_for(key, value), merge=False, force_add=True)
    _expect_named_error(lambda: to_objects(cfg, TrainConfig), key, value)


@pytest.mark.parametrize("key, backend", EVALUATE_FLOATS)
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_evaluate_float_setting_rejects_inf_and_nan(key, backend, value):
    from sae.dashboard.config import register_dashboard_configs
    from sae.evaluation.config import register_eval_configs
    from sae.interp.backends import register_explainer_configs
    from sae.interp.config import register_interp_configs

    for register in (register_eval_configs, register_interp_configs, register_explainer_configs, register_dashboard_configs):
        register()
    GlobalHydra.instance().clear()
    overrides = ["sae_path=x", f"{key}={value}", *([f"explainer={backend}"] if backend else [])]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    _expect_named_error(lambda: to_objects(cfg, EvaluateConfig), key, value)


# ---------------------------------------------------------------- as a user would: subprocesses


def _assert_clean_failure(proc, *words: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in proc.stderr.splitlines() if all(w in line for w in words)]
    assert lines, f"no line names {words}:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("activations.shard_tokens=0", ["activations.shard_tokens=0"]),
        ("activations.harvest_batch_size=0", ["activations.harvest_batch_size=0"]),
        ("trainer.log_every_n_steps=0", ["trainer.log_every_n_steps=0"]),
        ("trainer.density_window_steps=-1", ["trainer.density_window_steps=-1"]),
        ("trainer.devices=3", ["sae.batch_size=256", "3 processes"]),  # DDP splits every batch evenly
        ("model.hook=hook_nonsense", ["model.hook", "hook_nonsense", "Valid hooks"]),
        ("data.context_length=1000000", ["data.context_length=1000000", "maximum context"]),
        ("sae.l1_coefficient=inf", ["sae.l1_coefficient=inf", "finite"]),  # the run name is made from it first
        ("sae.lr=nan", ["sae.lr=nan", "finite"]),
        ("sae.resample.encoder_scale=inf", ["sae.resample.encoder_scale=inf", "finite"]),
    ],
)
def test_train_rejects(tmp_path, activation_cache_dir, override, words):
    proc = train_tiny(tmp_path / "run", activation_cache_dir, override, check=False)
    _assert_clean_failure(proc, *words)
    assert not (tmp_path / "run" / "sae").exists()


@pytest.mark.slow
def test_paths_that_cannot_be_directories_are_named(tmp_path, activation_cache_dir, saved_sae):
    """A regular file where a directory must go: the run, sweep, cache and evaluation directories, and export's OUT."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cases = [
        ("train.py", [*TINY, f"hydra.run.dir={blocker}/run"], "hydra.run.dir"),
        ("train.py", [*TINY, "--multirun", f"hydra.sweep.dir={blocker}/sweep", "sae.lr=1e-3"], "hydra.sweep.dir"),
        ("train.py", [*TINY, f"hydra.run.dir={tmp_path}/run", f"activations.cache_dir={blocker}/cache"], "activations.cache_dir"),
    ]
    for script, args, key in cases:
        proc = run_script(script, args, check=False, timeout=300)
        _assert_clean_failure(proc, key, str(blocker), "not a directory")
    run = _copy_sae(saved_sae, tmp_path / "evaluated")
    (run / "eval").write_text("a file where the evaluation directory goes")
    proc = run_script("evaluate.py", [f"sae_path={run}"], check=False, timeout=300)
    _assert_clean_failure(proc, "hydra.run.dir", str(run / "eval"), "not a directory")
    proc = run_script("evaluate.py", [f"sae_path={run}", f"hydra.run.dir={blocker}/eval"], check=False, timeout=300)
    _assert_clean_failure(proc, "hydra.run.dir", str(blocker), "not a directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.slow
def test_export_overwrite_of_the_run_directory_is_refused(tmp_path, saved_sae):
    """`python -m sae.export RUN RUN --overwrite` deleted the run; and an OUT that is a file gave a traceback."""
    run = _copy_sae(saved_sae, tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, tmp_path):
        proc = _module("sae.export", [str(run), str(out), "--format", "saelens", "--no-sparsity", "--overwrite"])
        _assert_clean_failure(proc, f"OUT={out}")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    (tmp_path / "out_file").write_text("x")
    proc = _module("sae.export", [str(run), str(tmp_path / "out_file"), "--format", "saelens", "--no-sparsity"])
    _assert_clean_failure(proc, "out_file", "is a file")


@pytest.mark.slow
def test_run_directory_without_room_for_its_checkpoints_is_refused(tmp_path, activation_cache_dir):
    """A run directory on a 3 MB filesystem: the checkpoints (weights and Adam, over 20 MB) cannot fit: refused up front."""
    with small_filesystem(tmp_path / "disk") as disk:
        proc = train_tiny(disk / "run", activation_cache_dir, check=False)
        _assert_clean_failure(proc, "checkpoints", "MB needed", "MB free", "hydra.run.dir")
        assert not (disk / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_evaluation_directory_in_use_is_refused_naming_the_holder(tmp_path, saved_sae):
    """Two evaluations writing one eval directory: the second stops at once, naming the first."""
    run = _copy_sae(saved_sae, tmp_path / "run")
    with lock_held_elsewhere(run / "eval") as pid:
        proc = run_script("evaluate.py", [f"sae_path={run}"], check=False, timeout=300)
    _assert_clean_failure(proc, str(run / "eval"), f"PID {pid}", "in use")
    assert not (run / "eval" / "parts").exists()


def _module(name: str, args: list[str]):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", name, *args], cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_train_rejects_missing_data_file(tmp_path, activation_cache_dir):
    proc = train_tiny(tmp_path / "run", activation_cache_dir, "data=local", f"data.files=[{tmp_path}/missing.txt]", check=False)
    _assert_clean_failure(proc, "data.files", "missing.txt")


@pytest.mark.slow
def test_corrupt_last_checkpoint_names_the_file_and_the_fix(tmp_path, activation_cache_dir):
    """A torn last.ckpt: the run stops naming it; trainer.resume=false starts over."""
    run_dir = tmp_path / "run"
    budget = ["sae.tokens=2560", "trainer.eval_tokens=0"]
    train_tiny(run_dir, activation_cache_dir, *budget, "trainer.checkpoint_every_n_steps=5")
    last = run_dir / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    for name in ("summary.json", "sae/sae.safetensors"):  # as if the run had been killed before it finished
        (run_dir / name).unlink()
    last.write_bytes(good[: len(good) // 2])
    proc = train_tiny(run_dir, activation_cache_dir, *budget, "trainer.checkpoint_every_n_steps=5", check=False)
    _assert_clean_failure(proc, str(last), "corrupt", "trainer.resume=false")
    assert last.read_bytes() == good[: len(good) // 2]  # nothing overwritten
    proc = train_tiny(run_dir, activation_cache_dir, *budget, "trainer.checkpoint_every_n_steps=5", "trainer.resume=false")
    assert (run_dir / "sae" / "sae.safetensors").exists()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 10
    assert (last.parent / "last.ckpt.old").read_bytes() == good[: len(good) // 2]  # kept
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.ckpt.old"]


# ---------------------------------------------------------------- evaluate.py


@pytest.fixture(scope="module")
def saved_sae(tmp_path_factory) -> Path:
    """A real SAE directory as train.py writes it (weights + cfg.json with the TINY training config)."""
    from sae.architectures import build_sae
    from sae.formats.native import save_sae

    resolved = OmegaConf.to_container(_train_cfg(), resolve=True)
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    sae = build_sae("relu", 576, 1152)
    provenance = {
        "model": resolved["model"]["name"],
        "layer": 2,
        "hook": "hook_mlp_out",
        "hook_name": "blocks.2.hook_mlp_out",
        "train_config": resolved,
    }
    save_sae(sae, run_dir / "sae", provenance)
    return run_dir


def _copy_sae(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_evaluate_rejects_missing_sae_path(tmp_path):
    proc = run_script("evaluate.py", [], check=False, timeout=300)
    _assert_clean_failure(proc, "sae_path")
    proc = run_script("evaluate.py", [f"sae_path={tmp_path}/nowhere"], check=False, timeout=300)
    _assert_clean_failure(proc, "sae_path", "nowhere")


@pytest.mark.slow
def test_evaluate_rejects_corrupt_weights(tmp_path, saved_sae):
    run = _copy_sae(saved_sae, tmp_path / "run")
    (run / "sae" / "sae.safetensors").write_bytes(b"not a safetensors file")
    proc = run_script("evaluate.py", [f"sae_path={run}"], check=False, timeout=300)
    _assert_clean_failure(proc, "sae.safetensors")


@pytest.mark.slow
def test_evaluate_rejects_corrupt_cfg_json(tmp_path, saved_sae):
    run = _copy_sae(saved_sae, tmp_path / "run")
    (run / "sae" / "cfg.json").write_text('{"model": "embedded:smollm2"}')
    proc = run_script("evaluate.py", [f"sae_path={run}"], check=False, timeout=300)
    _assert_clean_failure(proc, "cfg.json")


@pytest.mark.slow
def test_evaluate_openai_without_key_fails_before_any_work(tmp_path, saved_sae):
    run = _copy_sae(saved_sae, tmp_path / "run")
    env = script_env()
    env.pop("OPENAI_API_KEY", None)
    proc = run_script("evaluate.py", [f"sae_path={run}", "stage=interp", "explainer=openai"], check=False, timeout=240, env=env)
    _assert_clean_failure(proc, "OPENAI_API_KEY")
    assert not list((run / "eval").rglob("*.json")), "work was done before the key was checked"
