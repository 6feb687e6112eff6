"""The batches of DDP ranks (sae/activations/batches.py): together the ranks' shards are the one-process batch at
every step, resumed or not, from the cache or streamed; and streamed, ranks that each run the model on every N-th
model batch all receive the whole stream in its order (two real gloo processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from support.runs import REPO

from sae.activations.batches import CachedBatches, Shard, StreamedBatches
from sae.activations.cache import InMemoryActivations


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_cached_shards_together_are_the_one_process_batch(ranks):
    cache = InMemoryActivations(torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)))
    one = list(CachedBatches(cache, 96, 40, seed=3))  # 10 steps per pass: 4 passes
    shards = [list(CachedBatches(cache, 96, 40, 3, shard=Shard(r, ranks))) for r in range(ranks)]
    for step in range(40):
        assert torch.equal(torch.cat([shards[r][step] for r in range(ranks)]), one[step])
    resumed = [list(CachedBatches(cache, 96, 40, 3, start_step=17, shard=Shard(r, ranks))) for r in range(ranks)]
    assert all(torch.equal(a, b) for r in range(ranks) for a, b in zip(resumed[r], shards[r][17:], strict=True))


def test_a_batch_that_does_not_split_between_the_ranks_is_refused():
    with pytest.raises(ValueError, match="sae.batch_size=96 does not split evenly between 5 processes"):
        CachedBatches(InMemoryActivations(torch.zeros(1000, 8)), 96, 40, 3, shard=Shard(0, 5))


def _chunks_from(total: int, rows: int = 7):
    """A stream of `total` chunks of `rows` rows whose values say where they are in it (chunk i: rows 100 i + j)."""

    def chunks(start: int):
        for i in range(start // 3, total):  # 3 contexts per chunk
            yield torch.arange(rows, dtype=torch.float32).add(100 * i).unsqueeze(1).repeat(1, 4)

    return chunks


def test_streamed_shards_together_are_the_one_process_batch_and_share_one_state():
    make = lambda shard, state=None: StreamedBatches(_chunks_from(20), 3, 16, 30, 64, 5, state, shard)
    one = make(Shard())
    batches = list(one)
    shards = [make(Shard(r, 2)) for r in range(2)]
    parts = [list(s) for s in shards]
    for step in range(30):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batches[step])
    # Every rank holds the whole stream's state: a checkpoint from rank 0 resumes every rank.
    state = shards[0].state_at(29)
    assert torch.equal(state["rest"], shards[1].state_at(29)["rest"]) and torch.equal(state["rest"], one.state_at(29)["rest"])
    resumed = [list(make(Shard(r, 2), shards[0].state_at(24))) for r in range(2)]
    assert all(torch.equal(a, b) for r in range(2) for a, b in zip(resumed[r], parts[r][24:], strict=True))


# Rank r of 2 makes chunks r, r+2, ... of a 5-chunk stream of uneven sizes (it ends after rank 0's third chunk).
GATHER = """
import json, sys, torch, torch.distributed as dist
from sae.activations.batches import chunks_of_all_ranks
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
stream = [torch.full((3 + i, 2), float(i)) for i in range(5)]
got = list(chunks_of_all_ranks(iter(stream[rank::2])))
print(json.dumps([c.tolist() for c in got]))
dist.destroy_process_group()
"""


def test_every_rank_receives_the_whole_stream_in_order():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", GATHER, str(r), str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    expected = [torch.full((3 + i, 2), float(i)).tolist() for i in range(5)]
    assert [json.loads(out) for out in outputs] == [expected, expected]
