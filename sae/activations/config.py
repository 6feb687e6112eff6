"""How activations are harvested, cached and shuffled (the `activations` settings of train.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sae.core.checks import require, require_directory_path


@dataclass
class ActivationsConfig:
    # Cache harvested activations on disk and train from the cache (several shuffled passes if needed).
    # With cache=false, training streams fresh activations through the shuffle buffer instead.
    cache: bool = True
    cache_dir: str = "${oc.env:SAE_CACHE_DIR,${oc.env:HOME}/.cache/sae}/activations"
    n_tokens: int = 500_000  # tokens harvested into the cache
    shard_tokens: int = 131_072
    buffer_tokens: int = 65_536  # shuffle buffer size (tokens from many contexts mixed)
    # Contexts per model forward; null: 32 on a CPU, sized to the memory of a GPU (sae/activations/harvest.py).
    harvest_batch_size: Optional[int] = None
    dtype: str = "float16"  # storage dtype of the cache

    def __post_init__(self) -> None:
        require(self.n_tokens > 0, f"activations.n_tokens={self.n_tokens} must be > 0.")
        require(self.shard_tokens > 0, f"activations.shard_tokens={self.shard_tokens} must be > 0 (tokens per cache file).")
        require(self.buffer_tokens > 0, f"activations.buffer_tokens={self.buffer_tokens} must be > 0.")
        require(
            self.harvest_batch_size is None or self.harvest_batch_size > 0,
            f"activations.harvest_batch_size={self.harvest_batch_size} must be > 0 (contexts per forward), "
            "or null to size it to the device.",
        )
        require(self.dtype in ("float16", "float32"), f"activations.dtype={self.dtype!r}: use float16 or float32.")
        require_directory_path(self.cache_dir, "activations.cache_dir")
