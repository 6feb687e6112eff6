"""The on-disk activation cache: harvested once per (model, hook, data, size), read by every run that needs it.

The cache is a directory of memory-mapped `.npy` shards plus `meta.json`, keyed by everything
that determines its contents. It is built in a temporary directory and renamed into place
when complete, under a file lock: concurrent sweep jobs harvest once and never read a
half-written cache. Its size (tokens x hook width x bytes) is known before the harvest and compared
with the free space of `activations.cache_dir`; a disk that fills up anyway stops the harvest with
one line, and the temporary directory goes with it, so the next run with space starts clean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from sae.activations.config import ActivationsConfig
from sae.activations.harvest import ShuffleBuffer, harvest
from sae.core.errors import NoSpaceError
from sae.core.files import human_bytes, is_disk_full, require_free_space
from sae.lm.bridge import hook_name, hook_width
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig

# What moves the cache to another disk, shrinks it, or does without it.
SPACE_SETTINGS = "activations.cache_dir (another disk), activations.n_tokens (fewer tokens) or activations.cache=false (stream)"


def cache_key(model_cfg: ModelConfig, data_cfg: DataConfig, act_cfg: ActivationsConfig) -> str:
    identity = {
        "model": model_cfg.name,
        "model_dtype": model_cfg.dtype,
        "hook": hook_name(model_cfg),
        "data": asdict(data_cfg),
        "n_tokens": act_cfg.n_tokens,
        "dtype": act_cfg.dtype,
        "buffer_tokens": act_cfg.buffer_tokens,
        "version": 1,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = model_cfg.name.replace("/", "_").replace(":", "_")
    return f"{slug}-L{model_cfg.layer}-{model_cfg.hook}-{digest}"


class ActivationCache:
    """A finished cache: N×d activations across shards, read by row indices."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.shards = [np.load(self.path / name, mmap_mode="r") for name in self.meta["shards"]]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        # Small caches are read into memory: random row gathers from RAM are much faster.
        self.data = torch.from_numpy(np.concatenate(self.shards)) if self.offsets[-1] * self.d <= 2**31 else None

    @property
    def d(self) -> int:
        return int(self.meta["d"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the rows are stored in (activations.dtype when it was harvested)."""
        return torch.from_numpy(self.shards[0][:0]).dtype

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at `index`, as float32."""
        if self.data is not None:
            return self.data[index].float()
        return torch.from_numpy(self._gather_shards(index.numpy(), np.empty((len(index), self.d), dtype=np.float32)))

    def gather(self, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The rows at `index` written into `out` ([len(index), d] in `storage_dtype`, e.g. a pinned buffer from which
        a GPU copy does not block), unconverted: the values of `rows(index)` once made float32."""
        if self.data is not None:
            return torch.index_select(self.data, 0, index, out=out)
        self._gather_shards(index.numpy(), out.numpy())
        return out

    def _gather_shards(self, index: np.ndarray, out: np.ndarray) -> np.ndarray:
        order = np.argsort(index)
        shard_of = np.searchsorted(self.offsets, index[order], side="right") - 1
        for s in np.unique(shard_of):
            sel = order[shard_of == s]
            out[sel] = self.shards[s][index[sel] - self.offsets[s]]
        return out

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.rows(torch.randperm(len(self), generator=g)[: min(n, len(self))])


class InMemoryActivations:
    """Activations already in memory, read as a finished cache is (in their own dtype): for benchmarks and tests
    that need no harvest."""

    def __init__(self, data: torch.Tensor):
        self.data = data

    @property
    def d(self) -> int:
        return self.data.shape[1]

    def __len__(self) -> int:
        return len(self.data)

    @property
    def storage_dtype(self) -> torch.dtype:
        return self.data.dtype

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index]

    def gather(self, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.data, 0, index, out=out)


def build_cache(
    bridge_factory,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    act_cfg: ActivationsConfig,
    seed: int = 0,
) -> ActivationCache:
    """Return the cache for this key, harvesting it first if no finished one exists."""
    root = Path(act_cfg.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / cache_key(model_cfg, data_cfg, act_cfg)
    if (final / "meta.json").exists():
        return ActivationCache(final)
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").exists():  # another job finished it while we waited
            return ActivationCache(final)
        for stale in root.glob(final.name + ".tmp-*"):  # left by a harvest that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        bridge = bridge_factory()
        needed = act_cfg.n_tokens * hook_width(bridge, model_cfg) * np.dtype(act_cfg.dtype).itemsize
        require_free_space(root, needed, f"the activation cache ({act_cfg.n_tokens:,} tokens)", SPACE_SETTINGS)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=final.name + ".tmp-"))
        try:
            _write_shards(bridge, model_cfg, data_cfg, act_cfg, tmp, seed)
            tmp.rename(final)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise NoSpaceError(
                f"the disk of {root} filled up while the activation cache was written ({exc}); the partial cache is "
                f"removed. Free some space (it needs {human_bytes(needed)}) or change {SPACE_SETTINGS}."
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ActivationCache(final)


def _write_shards(bridge, model_cfg, data_cfg, act_cfg, out: Path, seed: int) -> None:
    dtype = np.dtype(act_cfg.dtype)
    stream = ShuffleBuffer(act_cfg.buffer_tokens, seed)(harvest(bridge, model_cfg, data_cfg, act_cfg.harvest_batch_size))
    shards, written, pending, d = [], 0, [], None
    start = time.perf_counter()
    bar = tqdm(total=act_cfg.n_tokens, desc="harvest activations", unit="tok", unit_scale=True)

    def flush(rows: torch.Tensor) -> None:
        name = f"shard_{len(shards):05d}.npy"
        array = rows.numpy().astype(dtype)
        if not np.isfinite(array).all():
            raise ValueError(f"activations overflow {dtype}: set activations.dtype=float32")
        np.save(out / name, array)
        shards.append(name)

    for chunk in stream:
        take = chunk[: act_cfg.n_tokens - written]
        d = take.shape[1]
        pending.append(take)
        written += len(take)
        bar.update(len(take))
        while sum(len(p) for p in pending) >= act_cfg.shard_tokens:
            rows = torch.cat(pending)
            flush(rows[: act_cfg.shard_tokens])
            pending = [rows[act_cfg.shard_tokens :]]
        if written >= act_cfg.n_tokens:
            break
    bar.close()
    if pending and sum(len(p) for p in pending):
        flush(torch.cat(pending))
    if written < act_cfg.n_tokens:
        print(
            f"note: the training split holds only {written} tokens; caching all of them "
            f"(activations.n_tokens={act_cfg.n_tokens})."
        )
    if written == 0:
        raise ValueError("the data source produced no tokens; check data.* (files, split, text_column).")
    seconds = time.perf_counter() - start
    meta = {
        "d": d,
        "n_tokens": written,
        "shards": shards,
        "hook": hook_name(model_cfg),
        "model": model_cfg.name,
        "harvest_seconds": seconds,
        "harvest_tokens_per_second": written / seconds,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
