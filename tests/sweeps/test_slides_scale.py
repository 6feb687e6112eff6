"""The slides' setting at full scale: streamed, checkpointed by the clock, and grouped where runs share a stream."""

from __future__ import annotations

import itertools

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from support.runs import REPO

from sae.core.checks import to_objects
from sae.sweeps.grouping import _task_config, shared_work_key
from sae.training.config import TrainConfig, register_configs
from sae.training.plan import RunPlan


def _compose(overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_slides_stream_their_activations_and_checkpoint_by_the_clock():
    cfg = _compose(["+sweep=slides"])
    assert cfg.sweep.grouped is True
    assert cfg.activations.cache is False and cfg.activations.harvest_batch_size is None
    assert cfg.trainer.checkpoint_every_minutes == 15 and cfg.trainer.checkpoint_every_n_steps >= 100_000
    objects = to_objects(_task_config(cfg), TrainConfig)
    assert (objects.model.name, objects.model.layer, objects.sae.batch_size) == ("distilgpt2", 5, 4096)
    # What the plan line says at start-up, for the 768-wide hook (the width is read from the hub when there).
    plan = RunPlan(
        steps=objects.sae.total_steps,
        batch_size=4096,
        cached=objects.activations.cache,
        cache_tokens=objects.activations.n_tokens,
        width=768,
        bytes_per_value=2,
        cache_dir=REPO,
        free_disk=10**12,
        cache_ready=False,
    )
    assert "activations streamed from the model, no disk cache" in plan.line() and "= 3.07 TB" in plan.line()


def test_the_8x_and_32x_runs_of_each_budget_share_one_stream():
    keys: dict[str, list[tuple[int, int]]] = {}
    for expansion, tokens in itertools.product((8, 32), (2_000_000_000, 3_000_000_000, 4_000_000_000)):
        cfg = _compose(["+sweep=slides", f"sae.expansion={expansion}", f"sae.tokens={tokens}"])
        keys.setdefault(shared_work_key(_task_config(cfg)), []).append((expansion, tokens))
    assert sorted(keys.values()) == [
        [(8, 2_000_000_000), (32, 2_000_000_000)],
        [(8, 3_000_000_000), (32, 3_000_000_000)],
        [(8, 4_000_000_000), (32, 4_000_000_000)],
    ]
