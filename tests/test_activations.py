"""Shuffle buffer, cached-batch order, and the on-disk activation cache on the real embedded model."""

from pathlib import Path

import pytest
import torch

from sae.activations import ActivationCache, ShuffleBuffer, build_cache, cache_key
from sae.config import ActivationsConfig, DataConfig, ModelConfig
from sae.datamodule import CachedBatches
from sae.lm import lazy_bridge


def _contexts(n_contexts: int, tokens_per_context: int, d: int = 3):
    """Chunks as the harvester yields them: one context at a time; column 0 holds the context id."""
    for c in range(n_contexts):
        rows = torch.zeros(tokens_per_context, d)
        rows[:, 0] = c
        rows[:, 1] = torch.arange(tokens_per_context)
        yield rows


def test_shuffle_buffer_mixes_contexts_and_loses_nothing():
    out = list(ShuffleBuffer(capacity=400, seed=0)(_contexts(50, 64)))
    everything = torch.cat(out)
    assert len(everything) == 50 * 64
    # Every (context, position) pair comes out exactly once.
    pairs = {(int(a), int(b)) for a, b in everything[:, :2].tolist()}
    assert len(pairs) == 50 * 64
    # A batch of 64 consecutive output tokens spans many contexts, not one.
    first_batch_contexts = everything[:64, 0].unique()
    assert len(first_batch_contexts) >= 5
    # Without the buffer, 64 consecutive tokens would come from a single context.
    assert len(next(_contexts(1, 64))[:, 0].unique()) == 1


def test_cached_batches_visit_each_token_once_per_pass_and_resume_exactly(tmp_path):
    import numpy as np

    data = np.arange(40, dtype=np.float32).reshape(40, 1).repeat(2, axis=1)
    np.save(tmp_path / "shard_00000.npy", data)
    (tmp_path / "meta.json").write_text('{"d": 2, "n_tokens": 40, "shards": ["shard_00000.npy"]}')
    cache = ActivationCache(tmp_path)
    batches = list(CachedBatches(cache, batch_size=8, total_steps=15, seed=3, start_step=lambda: 0))
    assert len(batches) == 15
    first_pass = torch.cat(batches[:5])[:, 0]
    assert sorted(first_pass.tolist()) == list(range(40))  # a permutation: no token twice within a pass
    second_pass = torch.cat(batches[5:10])[:, 0]
    assert sorted(second_pass.tolist()) == list(range(40))
    assert not torch.equal(first_pass, second_pass)  # a fresh permutation each pass
    resumed = list(CachedBatches(cache, batch_size=8, total_steps=15, seed=3, start_step=lambda: 7))
    assert len(resumed) == 8
    for a, b in zip(resumed, batches[7:]):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_cache_is_built_once_and_a_half_written_one_is_ignored(tmp_path):
    model = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=1)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=32)
    acts = ActivationsConfig(cache_dir=str(tmp_path), n_tokens=3000, shard_tokens=1024, buffer_tokens=2048, harvest_batch_size=8)
    key = cache_key(model, data, acts)
    # A crashed harvest leaves a temporary directory behind; it must never be read.
    stale = Path(tmp_path) / f"{key}.tmp-crashed"
    stale.mkdir()
    (stale / "shard_00000.npy").write_bytes(b"garbage")
    loads = []
    bridge = lazy_bridge(model)

    def counting_factory():
        loads.append(1)
        return bridge()

    cache = build_cache(counting_factory, model, data, acts)
    assert len(cache) == 3000 and cache.d == 576
    assert len(cache.meta["shards"]) == 3
    assert torch.isfinite(cache.sample(500)).all()
    assert cache.sample(500).std() > 0
    again = build_cache(lambda: pytest.fail("a finished cache must not harvest again"), model, data, acts)
    assert again.path == cache.path and len(loads) == 1
