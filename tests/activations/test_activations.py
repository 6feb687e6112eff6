"""Shuffle buffer, cached-batch order, and the on-disk activation cache on the real embedded model."""

import itertools
from pathlib import Path

import pytest
import torch
from support.disks import fill, small_filesystem

from sae.activations.batches import CachedBatches, StreamedBatches
from sae.activations.cache import ActivationCache, build_cache, cache_key
from sae.activations.config import ActivationsConfig
from sae.activations.harvest import ShuffleBuffer, harvest
from sae.core.errors import NoSpaceError
from sae.lm.bridge import bos_token_id, hook_name, lazy_bridge, load_language_model
from sae.lm.config import ModelConfig
from sae.text.contexts import iter_contexts, iter_texts
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


@pytest.fixture(scope="module")
def smollm2():
    return load_language_model(ModelConfig(name="embedded:smollm2", alias="smollm2", layer=2))


def test_harvest_drops_exactly_the_bos_positions(smollm2):
    """The first model batch: one row per non-BOS token of its contexts, in order, and no BOS activation among them."""
    model = ModelConfig(name="embedded:smollm2", alias="s", layer=2)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=16)
    bos = bos_token_id(smollm2)
    contexts = torch.stack(list(itertools.islice(iter_contexts(iter_texts(data, "train"), smollm2.tokenizer, 16, bos), 32)))
    keep = contexts != bos
    assert (~keep).sum() > 4, "the contexts must hold BOS tokens inside them too (documents joined by BOS)"
    chunk = next(harvest(smollm2, model, data, batch_size=32))
    assert chunk.shape == (int(keep.sum()), 576)
    with torch.inference_mode():
        _, cache = smollm2.run_with_cache(contexts, names_filter=hook_name(model), stop_at_layer=3)
    acts = cache[hook_name(model)].float()
    torch.testing.assert_close(chunk, acts[keep], rtol=0, atol=1e-6)  # the non-BOS rows, in order
    bos_acts = acts[~keep]
    distance = torch.cdist(bos_acts, chunk).min(dim=1).values
    assert (distance > 1e-3).all(), "a BOS activation remains among the harvested rows"


SMALL_CACHE = {"n_tokens": 2000, "shard_tokens": 512, "buffer_tokens": 1024, "harvest_batch_size": 8}


@pytest.mark.slow
def test_cache_larger_than_the_free_disk_is_refused_before_harvesting(tmp_path):
    """3000 tokens x 576 x 2 bytes (3.5 MB) on a 3 MB filesystem: refused with both numbers and the settings."""
    model = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=1)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=32)
    with small_filesystem(tmp_path / "disk") as disk:
        acts = ActivationsConfig(cache_dir=str(disk), **{**SMALL_CACHE, "n_tokens": 3000})
        with pytest.raises(NoSpaceError) as err:
            build_cache(lazy_bridge(model), model, data, acts)
        message = str(err.value)
        assert "3.3 MB needed" in message and "3.0 MB free" in message, message
        assert "activations.cache_dir" in message and "activations.n_tokens" in message and "\n" not in message
        assert [p.name for p in disk.iterdir() if not p.name.endswith(".lock")] == []


class FillsTheDisk:
    """The model, while another writer fills the cache's disk during the harvest (after `after` forwards)."""

    def __init__(self, bridge, disk: Path, after: int):
        self._bridge, self._disk, self._after, self.forwards = bridge, disk, after, 0

    def __getattr__(self, name):
        return getattr(self._bridge, name)

    def run_with_cache(self, *args, **kwargs):
        self.forwards += 1
        if self.forwards == self._after:
            fill(self._disk, leave=64 * 1024)
        return self._bridge.run_with_cache(*args, **kwargs)


@pytest.mark.slow
def test_disk_filling_up_mid_harvest_leaves_nothing_half_written_and_a_rerun_works(tmp_path):
    model = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=1)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=32)
    bridge = lazy_bridge(model)
    with small_filesystem(tmp_path / "disk") as disk:
        acts = ActivationsConfig(cache_dir=str(disk), **SMALL_CACHE)  # 2.2 MB: fits when the harvest starts
        filling = FillsTheDisk(bridge(), disk, after=3)
        with pytest.raises(NoSpaceError) as err:
            build_cache(lambda: filling, model, data, acts)
        assert filling.forwards >= 3 and "filled up" in str(err.value) and "activations.cache_dir" in str(err.value)
        assert "\n" not in str(err.value)
        key = cache_key(model, data, acts)
        assert not list(disk.glob(f"{key}.tmp-*")) and not (disk / key).exists()  # nothing half-written left
        (disk / "filler.bin").unlink()  # space again: the next run harvests the whole cache
        cache = build_cache(bridge, model, data, acts)
        assert len(cache) == 2000 and torch.isfinite(cache.sample(500)).all()
