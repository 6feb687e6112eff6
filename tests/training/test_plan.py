"""The run's plan line: tokens, steps, the disk its cache needs against the free disk, and the measured time left."""

import json
import shutil
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from support.runs import REPO

from callbacks.progress import TimeEstimate
from sae.activations.cache import cache_key
from sae.architectures import ReLUSAE
from sae.core.checks import to_objects
from sae.training.config import SAEConfig, TrainConfig, register_configs
from sae.training.module import SAETrainingModule
from sae.training.plan import RunPlan, WarmupClock, format_bytes, format_duration, free_disk, run_plan


def _plan(**changes) -> RunPlan:
    settings = {
        "steps": 488_281,
        "batch_size": 4096,
        "cached": False,
        "cache_tokens": 100_000_000,
        "width": 768,
        "bytes_per_value": 2,
        "cache_dir": Path("/scratch/cache"),
        "free_disk": 80_600_000_000,
        "cache_ready": False,
    }
    return RunPlan(**{**settings, **changes})


def test_streamed_plan_states_what_a_disk_cache_of_its_tokens_would_take():
    plan = _plan()
    assert plan.tokens == 1_999_998_976
    assert plan.cache_bytes(2_000_000_000) == 2_000_000_000 * 768 * 2
    line = plan.line()
    assert line.startswith("plan: 1,999,998,976 training tokens in 488,281 steps of 4,096; activations streamed")
    assert "1,999,998,976 tokens × 768 × 2 bytes = 3.07 TB" in line
    assert "disk free in /scratch/cache: 80.6 GB" in line


def test_cached_plan_says_when_the_cache_does_not_fit_and_how_to_fix_it():
    fits = _plan(cached=True, steps=1953, batch_size=512, cache_tokens=400_000, width=576).line()
    assert "2.5 passes over the cache; cache to harvest: 400,000 tokens × 576 × 2 bytes = 461 MB" in fits
    assert "does not fit" not in fits
    short = _plan(cached=True, free_disk=10_000_000_000).line()
    assert "100,000,000 tokens × 768 × 2 bytes = 154 GB" in short
    fix = "it does not fit; free space there, set activations.cache_dir elsewhere, or stream with activations.cache=false"
    assert short.endswith(fix)
    ready = _plan(cached=True, cache_ready=True, free_disk=10_000_000_000).line()
    assert "is harvested already" in ready and "does not fit" not in ready


def test_unknown_width_is_said_not_guessed():
    line = _plan(cached=True, width=None).line()
    assert "100,000,000 tokens × d (unknown until the model loads) × 2 bytes;" in line
    assert _plan(width=None).cache_bytes(10) is None


def test_plan_of_the_default_config_reads_the_width_and_the_finished_cache(tmp_path):
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=[f"activations.cache_dir={tmp_path / 'acts'}"])
    objects = to_objects(cfg, TrainConfig)
    plan = run_plan(objects)
    assert (plan.steps, plan.batch_size, plan.cache_tokens) == (1953, 512, 400_000)
    assert plan.width == 576 and plan.bytes_per_value == 2 and not plan.cache_ready  # from SmolLM2's config
    assert abs(plan.free_disk - shutil.disk_usage(tmp_path).free) < 1e8  # the parent's file system: not made yet
    key_dir = tmp_path / "acts" / cache_key(objects.model, objects.data, objects.activations)
    key_dir.mkdir(parents=True)
    (key_dir / "meta.json").write_text(json.dumps({"d": 333, "n_tokens": 400_000, "shards": []}))
    ready = run_plan(objects)
    assert ready.cache_ready and ready.width == 333  # the cache's own record wins
    objects.activations.cache = False
    assert not run_plan(objects).cache_ready


def test_free_disk_of_a_directory_not_made_yet_is_that_of_its_parent(tmp_path):
    assert free_disk(tmp_path / "not" / "yet") is not None
    assert abs(free_disk(tmp_path / "not" / "yet") - shutil.disk_usage(tmp_path).free) < 1e8


def test_warmup_clock_skips_the_warmup_then_measures_and_says_when_it_ends():
    clock = WarmupClock(total_steps=1000, batch_size=512, skip_steps=10, measure_steps=30, measure_seconds=10)
    lines = []
    for step in range(1, 100):
        # 2 s each for the first 10 steps (start-up), then 0.5 s each: 2 steps/s
        now = 2.0 * step if step <= 10 else 20 + 0.5 * (step - 10)
        line = clock.step(step, now)
        if line:
            lines.append((step, line))
    assert len(lines) == 1 and clock.done
    step, line = lines[0]
    assert step == 41  # 30 steps measured (12..41 after the start at step 11), 15 s >= 10 s
    assert "measured 2 steps/s (1,024 tokens/s) over steps 12-41; 959 steps left: about 8 min 00 s" in line


def test_warmup_clock_waits_for_enough_seconds_and_counts_from_a_resumed_step():
    clock = WarmupClock(total_steps=10_000, batch_size=100, skip_steps=5, measure_steps=30, measure_seconds=10)
    lines = [clock.step(step, 0.125 * (step - 5000)) for step in range(5001, 5200)]
    found = [line for line in lines if line]
    assert len(found) == 1
    assert lines.index(found[0]) + 5001 == 5006 + 80  # 30 steps took 3.75 s: measured until 10 s had passed
    assert "8 steps/s (800 tokens/s) over steps 5,007-5,086; 4,914 steps left: about 10 min 14 s" in found[0]


def test_a_run_shorter_than_the_measurement_still_reports_at_its_end():
    clock = WarmupClock(total_steps=20, batch_size=8, skip_steps=10)
    found = [line for step in range(1, 21) if (line := clock.step(step, float(step)))]
    assert len(found) == 1 and "over steps 12-20; 0 steps left: about 0 s" in found[0]


def test_durations_and_sizes_read_at_a_glance():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600 * 5 + 60 * 7, 3600 * 49)] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "59 min 59 s",
        "5 h 07 min",
        "2 d 1 h",
    ]
    assert [format_bytes(n) for n in (999, 1000, 460_800_000, 999_999_999, 3.072e12)] == [
        "999 B",
        "1 kB",
        "461 MB",
        "1 GB",
        "3.07 TB",
    ]


def test_a_run_prints_its_measured_time_estimate_once_after_the_warmup(tmp_path, capsys):
    class Batches:
        def __iter__(self):
            return iter([torch.randn(32, 8) for _ in range(20)])

    torch.manual_seed(0)
    module = SAETrainingModule(ReLUSAE(8, 16), SAEConfig(expansion=2, batch_size=32, tokens=32 * 20))
    estimate = TimeEstimate(32, skip_steps=2, measure_steps=5, measure_seconds=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[estimate],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=Batches())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan: measured")]
    assert len(lines) == 1 and "over steps 4-8; 12 steps left: about" in lines[0], lines
