"""Batches on the training device: Lightning gets them there and copies nothing; the cache reads into a given buffer.

The GPU cases run where CUDA is available (they are skipped on a CPU-only machine).
"""

import json

import lightning as L
import numpy as np
import pytest
import torch

from sae.activations.batches import CachedBatches
from sae.activations.cache import ActivationCache
from sae.activations.harvest import CPU_HARVEST_BATCH_SIZE, auto_harvest_batch_size, harvest, harvest_batch_size_for
from sae.architectures import ReLUSAE
from sae.lm.bridge import load_language_model, model_dtype
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig
from sae.training.config import SAEConfig
from sae.training.module import SAETrainingModule

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cache(tmp_path, n: int = 200, d: int = 6, dtype=np.float16) -> ActivationCache:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, d)).astype(dtype)
    names = []
    for i, start in enumerate(range(0, n, 64)):
        names.append(f"shard_{i:05d}.npy")
        np.save(tmp_path / names[-1], data[start : start + 64])
    (tmp_path / "meta.json").write_text(json.dumps({"d": d, "n_tokens": n, "shards": names}))
    return ActivationCache(tmp_path)


class _Recorder(SAETrainingModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch)
        return super().training_step(batch, batch_idx)


class _Yielded:
    def __init__(self, batches):
        self.batches, self.yielded = batches, []

    def __iter__(self):
        for batch in self.batches:
            self.yielded.append(batch)
            yield batch


@pytest.mark.parametrize("device", DEVICES)
def test_lightning_trains_on_the_very_tensors_the_batches_yield(device):
    """A batch already on the training device reaches training_step as the same tensor: no second copy."""
    torch.manual_seed(0)
    batches = _Yielded([torch.randn(16, 6, device=device) for _ in range(5)])
    module = _Recorder(ReLUSAE(6, 12), SAEConfig(expansion=2, batch_size=16, tokens=80), log_every_n_steps=2)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=batches)
    assert len(module.seen) == 5
    assert all(a is b for a, b in zip(module.seen, batches.yielded, strict=True))


def test_cache_gather_writes_the_rows_into_the_given_buffer_in_memory_and_from_the_shards(tmp_path):
    cache = _cache(tmp_path)
    assert cache.storage_dtype == torch.float16
    index = torch.randperm(len(cache), generator=torch.Generator().manual_seed(1))[:50]
    expected = cache.rows(index)
    assert expected.dtype == torch.float32
    out = torch.empty(50, cache.d, dtype=cache.storage_dtype)
    assert cache.gather(index, out) is out and torch.equal(out.float(), expected)
    cache.data = None  # a cache too large for memory reads the memory-mapped shards
    from_shards = torch.empty(50, cache.d, dtype=cache.storage_dtype)
    cache.gather(index, from_shards)
    assert torch.equal(from_shards.float(), expected) and torch.equal(cache.rows(index), expected)


def test_cached_batches_on_the_host_are_the_cache_rows_in_permutation_order(tmp_path):
    cache = _cache(tmp_path)
    batches = list(CachedBatches(cache, batch_size=32, total_steps=12, seed=4))
    index = torch.randperm(len(cache), generator=torch.Generator().manual_seed(4 * 100_003))[32:64]
    assert torch.equal(batches[1], cache.rows(index)) and batches[1].device.type == "cpu"


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_cached_batches_on_a_gpu_equal_the_host_batches(tmp_path, dtype):
    cache = _cache(tmp_path, n=1000, dtype=dtype)
    host = list(CachedBatches(cache, batch_size=64, total_steps=40, seed=2))
    on_gpu = list(CachedBatches(cache, batch_size=64, total_steps=40, seed=2, device="cuda"))
    cache.data = None
    from_shards = list(CachedBatches(cache, batch_size=64, total_steps=40, seed=2, device="cuda"))
    torch.cuda.synchronize()
    assert len(on_gpu) == len(host) == 40
    for a, b, c in zip(host, on_gpu, from_shards, strict=True):
        assert b.device.type == "cuda" and b.dtype == torch.float32
        assert torch.equal(a, b.cpu()) and torch.equal(a, c.cpu())


@pytest.fixture(scope="module")
def smollm2():
    return load_language_model(ModelConfig(name="embedded:smollm2", alias="smollm2", layer=1))


def test_harvest_keeps_streamed_activations_on_the_model_device_and_sizes_its_batches(smollm2):
    model = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=1)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=16)
    device = torch.device(smollm2.cfg.device)
    expected = CPU_HARVEST_BATCH_SIZE if device.type == "cpu" else None
    size = auto_harvest_batch_size(smollm2, data.context_length)
    if expected is not None:
        assert size == expected
    else:
        assert 1 <= size <= 1024 and size & (size - 1) == 0  # a power of two
    host = next(harvest(smollm2, model, data, batch_size=None))
    kept = next(harvest(smollm2, model, data, batch_size=None, on_device=True))
    assert host.device.type == "cpu" and kept.device == device and kept.dtype == torch.float32
    # one forward of the sized batch: up to 15 tokens per context after its BOS
    assert size * 15 - size <= len(host) <= size * 15
    assert torch.equal(host, kept.cpu())
    assert torch.get_float32_matmul_precision() == "highest"


def test_auto_dtype_is_the_checkpoint_dtype(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=64)).to(torch.bfloat16).save_pretrained(
        tmp_path
    )
    assert model_dtype(ModelConfig(name=str(tmp_path), alias="m", layer=0, dtype="auto")) == torch.bfloat16
    assert model_dtype(ModelConfig(name=str(tmp_path), alias="m", layer=0)) == torch.float32  # the default stays float32
    assert model_dtype(ModelConfig(name="embedded:smollm2", alias="s", layer=0, dtype="auto")) == torch.float32


def test_auto_dtype_runs_a_float16_checkpoint_in_float32_on_a_cpu_only(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=64)).half().save_pretrained(tmp_path)
    cfg = ModelConfig(name=str(tmp_path), alias="m", layer=0, dtype="auto", device="cpu")
    assert model_dtype(cfg) == torch.float32
    assert model_dtype(cfg, device="cuda") == torch.float16


def test_gpu_harvest_batch_is_the_largest_power_of_two_that_fits_a_quarter_of_the_memory():
    gib = 1024**3
    distilgpt2 = {"model_bytes": 82_000_000 * 4, "element_bytes": 4, "d_model": 768, "d_mlp": 3072, "n_heads": 12}
    # 2 × 128 × (4 × (8·768 + 4·3072 + 2·12·128) + 4·768) bytes = 22.8 MB a context
    assert harvest_batch_size_for(16 * gib, **distilgpt2, context_length=128) == 128  # 4 GiB / 22.8 MB = 175
    assert harvest_batch_size_for(141 * gib, **distilgpt2, context_length=128) == 1024  # the cap
    assert harvest_batch_size_for(16 * gib, **distilgpt2, context_length=1024) == 8  # 8x the context, > 8x the memory
    bf16_7b = {"model_bytes": 7 * 10**9 * 2, "element_bytes": 2, "d_model": 4096, "d_mlp": 11008, "n_heads": 32}
    assert harvest_batch_size_for(8 * gib, **bf16_7b, context_length=1024) == 1  # the model alone is more than a quarter
