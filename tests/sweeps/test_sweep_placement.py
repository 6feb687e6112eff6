"""A grouped sweep through hydra/launcher=local spreads its groups over the machine's devices: each group job
takes a device slot of its own and holds it while it trains. Without GPUs here, two CPU slots
(`sweep.device_slots=2`) stand in for two GPUs; on a GPU machine the slots are its GPUs, found by itself."""

from __future__ import annotations

import pytest
from support.runs import TINY, read_json, run_script

pytestmark = pytest.mark.slow


def test_two_groups_train_at_once_each_on_its_own_device_slot(tmp_path, activation_cache_dir):
    sweep_dir = tmp_path / "sweep"
    args = [
        "--multirun",
        "hydra/launcher=local",
        "sweep.grouped=true",
        "++sweep.device_slots=2",
        *TINY,
        "sae.tokens=12800",
        "logger=csv",
        "trainer.threads=1",
        "trainer.eval_tokens=0",
        "trainer.heldout_tokens=0",
        "sae.seed=0,1",  # the data order follows the seed: two groups
        f"hydra.sweep.dir={sweep_dir}",
        f"activations.cache_dir={activation_cache_dir}",
    ]
    run_script("train.py", args, timeout=1200)

    placements = [read_json(p) for p in sorted((sweep_dir / ".groups").glob("*/placement.json"))]
    assert len(placements) == 2
    assert sorted(p["slot"] for p in placements) == [0, 1] and all(p["slots"] == 2 for p in placements)
    assert all(p["devices"] == ["cpu"] for p in placements)
    first, second = placements
    assert max(first["started"], second["started"]) < min(first["finished"], second["finished"])  # side by side
    assert len(list(sweep_dir.glob("*/summary.json"))) == 2
