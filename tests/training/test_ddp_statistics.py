"""Statistics under DDP are the whole batch's: two CPU processes (gloo) training on hand-made activations
(tests/training/ddp_statistics_run.py), against the same fit in one process.

A latent that fires only on rows rank 1 holds is alive on both ranks (density window, resampling, TopK's
dead-latent counters); the ranks keep identical statistics and weights; BatchTopK selects over the batch the
ranks share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.runs import REPO

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("ddp_statistics_run.py")


def fit(tmp_path: Path, architecture: str, devices: int) -> list[dict]:
    out = tmp_path / f"{architecture}-{devices}"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), architecture, str(devices)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


def assert_same_state(a: dict, b: dict, exact: bool) -> None:
    for name in a:
        x, y = torch.tensor(a[name]), torch.tensor(b[name])
        if exact:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)


def test_a_latent_firing_only_on_rank_1s_rows_is_alive_and_resampling_agrees(tmp_path):
    one = fit(tmp_path, "relu", 1)[0]
    ranks = fit(tmp_path, "relu", 2)
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:
        # Latents 2..7 never fire; latent 0 fires on the special row only, which rank 1 holds: alive.
        assert rank["density"]["dead_fraction"] == one["density"]["dead_fraction"] == 6 / 8
        assert rank["density"]["density_tokens"] == one["density"]["density_tokens"] == 16  # both ranks' rows
        # Resampling found the same 6 dead latents on both ranks, rank 0's directions reached rank 1, and
        # Adam forgot their moments everywhere.
        assert rank["resampling"]["history"] == one["resampling"]["history"]
        assert rank["resampling"]["history"][0]["resampled"] == 6
        assert rank["resampling"]["dead_exp_avg"] == 0.0
        assert_same_state(rank["state"], ranks[0]["state"], exact=True)
    assert_same_state(ranks[0]["state"], one["state"], exact=False)


def test_topk_dead_latent_counters_count_the_whole_batch(tmp_path):
    one = fit(tmp_path, "topk", 1)[0]
    ranks = fit(tmp_path, "topk", 2)
    for rank in ranks:
        # 2 steps of 8 tokens: latents 0 (rank 1's special row) and 1 fired at both, the rest never.
        assert rank["state"]["tokens_since_fired"] == one["state"]["tokens_since_fired"] == [0, 0] + [16] * 6
        assert rank["density"] == one["density"]


def test_batchtopk_selects_over_the_batch_the_ranks_share(tmp_path):
    one = fit(tmp_path, "batchtopk", 1)[0]
    ranks = fit(tmp_path, "batchtopk", 2)
    assert ranks[0]["state"]["threshold"] == ranks[1]["state"]["threshold"]
    assert ranks[0]["state"]["threshold"] == pytest.approx(one["state"]["threshold"], abs=1e-6)
    assert ranks[0]["density"] == pytest.approx(one["density"])  # k·B = 16 latents per batch in both
    assert_same_state(ranks[0]["state"], ranks[1]["state"], exact=True)
    assert_same_state(ranks[0]["state"], one["state"], exact=False)


def test_in_float64_the_ranks_together_take_the_one_process_steps(tmp_path):
    """Real Adam steps (lr 1e-2, an L1 penalty): the mean of the ranks' half-batch gradients is the batch's gradient,
    so the weights agree to float64 rounding, far below the ~1e-2 a step moves them."""
    one = fit(tmp_path, "relu-float64", 1)[0]
    ranks = fit(tmp_path, "relu-float64", 2)
    assert_same_state(ranks[0]["state"], ranks[1]["state"], exact=True)
    moved = max((torch.tensor(v) - torch.tensor(one["start"][k])).abs().max().item() for k, v in one["state"].items())
    assert moved > 1e-3
    for name in one["state"]:
        torch.testing.assert_close(
            torch.tensor(ranks[0]["state"][name], dtype=torch.float64),
            torch.tensor(one["state"][name], dtype=torch.float64),
            atol=1e-12,
            rtol=0,
            msg=name,
        )
