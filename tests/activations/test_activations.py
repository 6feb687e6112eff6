"""Shuffle buffer, cached-batch order, and the on-disk activation cache on the real embedded model."""

from pathlib import Path

import pytest
import torch

from sae.activations.batches import CachedBatches, StreamedBatches
from sae.activations.cache import ActivationCache, build_cache, cache_key
from sae.activations.config import ActivationsConfig
from sae.activations.harvest import ShuffleBuffer
from sae.lm.bridge import lazy_bridge
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig


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
    batches = list(CachedBatches(cache, batch_size=8, total_steps=15, seed=3))
    assert len(batches) == 15
    first_pass = torch.cat(batches[:5])[:, 0]
    assert sorted(first_pass.tolist()) == list(range(40))  # a permutation: no token twice within a pass
    second_pass = torch.cat(batches[5:10])[:, 0]
    assert sorted(second_pass.tolist()) == list(range(40))
    assert not torch.equal(first_pass, second_pass)  # a fresh permutation each pass
    resumed = list(CachedBatches(cache, batch_size=8, total_steps=15, seed=3, start_step=7))
    assert len(resumed) == 8
    for a, b in zip(resumed, batches[7:], strict=False):
        assert torch.equal(a, b)


def _chunks_from(n_contexts: int, tokens_per_context: int = 10, per_chunk: int = 3):
    """A stand-in for `harvest(..., skip_contexts=n)`: model batches of `per_chunk` contexts, after the first n."""

    def chunks(skip: int):
        contexts = _contexts(n_contexts, tokens_per_context)
        rows = [c for i, c in enumerate(contexts) if i >= skip]
        for i in range(0, len(rows), per_chunk):
            yield torch.cat(rows[i : i + per_chunk])

    return chunks


def test_streamed_batches_resume_exactly_from_a_checkpointed_state():
    # 20 contexts of 10 tokens per pass, batches of 16, a 64-token buffer: several passes, with leftovers.
    make = lambda state=None: StreamedBatches(
        _chunks_from(20),
        3,
        batch_size=16,
        total_steps=40,
        buffer_tokens=64,  # noqa: E731
        seed=5,
        state=state,
    )
    whole = list(make())
    assert len(whole) == 40
    first_pass = torch.cat(whole[:12])
    assert len({(int(a), int(b)) for a, b in first_pass[:, :2].tolist()}) == len(first_pass)  # nothing twice in a pass
    for k in (1, 7, 12, 13, 25, 39):
        stream = make()
        it = iter(stream)
        seen = [next(it) for _ in range(k + 1)]  # Lightning has prefetched batch k when it checkpoints at step k
        state = stream.state_at(k)
        state = {key: (v.clone() if isinstance(v, torch.Tensor) else v) for key, v in state.items()}
        resumed = list(make(state))
        assert len(resumed) == 40 - k, k
        for a, b in zip(seen[:k] + resumed, whole, strict=False):
            assert torch.equal(a, b), k


def test_streamed_resampling_position_follows_training():
    stream = StreamedBatches(_chunks_from(20), 3, batch_size=16, total_steps=40, buffer_tokens=64, seed=5)
    it = iter(stream)
    positions = []
    for step in range(1, 11):
        next(it)
        positions.append(stream.position(step))
    assert positions == sorted(positions) and positions[-1] > positions[0]  # reads further as training goes on


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
