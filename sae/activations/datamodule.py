"""The run's activation source for Lightning: training batches, the initialisation sample, and
the inputs that resampling scores; its position is checkpointed so a resumed run sees the same batches
(sae/activations/batches.py says how the order is kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch

from sae.activations.batches import WHOLE_BATCH, CachedBatches, Shard, StreamedBatches, chunks_of_all_ranks
from sae.activations.cache import ActivationCache, build_cache
from sae.activations.config import ActivationsConfig
from sae.activations.harvest import ShuffleBuffer, auto_harvest_batch_size, harvest
from sae.activations.lockstep import MemberBatches
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig

SAMPLE_FOR_INIT = 8192


class ActivationDataModule(L.LightningDataModule):
    """Activations for one run, from the on-disk cache (`activations.cache=true`) or streamed from the model.

    With `lockstep` (a grouped sweep), the cache and the batches are shared with the group's other runs. Under
    DDP each rank gets its rows of every batch, and streamed, runs the model on its share of the model batches.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        act_cfg: ActivationsConfig,
        batch_size: int,
        total_steps: int,
        seed: int,
        bridge: Callable[[], object],
        lockstep: MemberBatches | None = None,
    ):
        super().__init__()
        self.lockstep = lockstep
        self.model_cfg, self.data_cfg, self.act_cfg = model_cfg, data_cfg, act_cfg
        self.batch_size, self.total_steps, self.seed = batch_size, total_steps, seed
        self.bridge = bridge
        self._cache: ActivationCache | None = None
        self._resume: dict | None = None  # from a checkpoint, before the batches are built
        self._batches: CachedBatches | StreamedBatches | None = None

    @property
    def cached(self) -> bool:
        return self.act_cfg.cache

    def cache(self) -> ActivationCache:
        if self._cache is None:
            build = lambda: build_cache(self.bridge, self.model_cfg, self.data_cfg, self.act_cfg, seed=self.seed)
            self._cache = self.lockstep.shared("cache", build) if self.lockstep else build()
        return self._cache

    def _chunks_from(self, contexts: int) -> Iterator[torch.Tensor]:
        """Streamed activations, left on the model's device."""
        return harvest(
            self.bridge(), self.model_cfg, self.data_cfg, self.act_cfg.harvest_batch_size, skip_contexts=contexts, on_device=True
        )

    def _harvest_batch_size(self) -> int:
        return self.act_cfg.harvest_batch_size or auto_harvest_batch_size(self.bridge(), self.data_cfg.context_length)

    def _chunks_shared_from(self, contexts: int, shard: Shard) -> Iterator[torch.Tensor]:
        """The same stream under DDP: this rank runs the model on its share of the batches, and gets the others'."""
        mine = harvest(
            self.bridge(),
            self.model_cfg,
            self.data_cfg,
            self.act_cfg.harvest_batch_size,
            skip_contexts=contexts,
            on_device=True,
            every=shard.ranks,
            offset=shard.rank,
        )
        return chunks_of_all_ranks(mine)

    def init_sample(self) -> torch.Tensor:
        """Activations for initialising the SAE (input scale, b_dec)."""
        if self.cached:
            return self.cache().sample(SAMPLE_FOR_INIT, self.seed)
        return self.lockstep.shared("init_sample", self._streamed_sample) if self.lockstep else self._streamed_sample()

    def _streamed_sample(self) -> torch.Tensor:
        """The first shuffle-buffer output: the buffer fills once, so a group's runs share it."""
        first = next(iter(ShuffleBuffer(self.act_cfg.buffer_tokens, self.seed)(self._chunks_from(0))), None)
        if first is None:
            raise ValueError("the data source produced no tokens; check data.* (files, split, text_column).")
        return first[:SAMPLE_FOR_INIT].cpu()  # the SAE is initialised on the host, before Lightning moves it

    def resampling_inputs(self, step: int) -> Iterator[torch.Tensor]:
        """Training activations to score when resampling at `step`: a fresh random order of the cache, or
        the stream's next contexts from where training has read to (wrapping to the split's start)."""
        if self.cached:
            cache = self.cache()
            order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step))
            for i in range(0, len(order), SAMPLE_FOR_INIT):
                yield cache.rows(order[i : i + SAMPLE_FOR_INIT])
            return
        yield from self._chunks_from(self._batches.position(step))
        yield from self._chunks_from(0)

    def _batches_from(self, start: int, stream_state: dict | None, shard: Shard = WHOLE_BATCH) -> CachedBatches | StreamedBatches:
        if self.cached:
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
            return CachedBatches(self.cache(), self.batch_size, self.total_steps, self.seed, start, shard=shard, device=device)
        chunks_from = self._chunks_from if shard.ranks == 1 else lambda contexts: self._chunks_shared_from(contexts, shard)
        return StreamedBatches(
            chunks_from,
            self._harvest_batch_size(),
            self.batch_size,
            self.total_steps,
            self.act_cfg.buffer_tokens,
            self.seed,
            stream_state,
            shard,
        )

    def train_dataloader(self):
        start = self._resume["step"] if self._resume else 0
        stream_state = self._resume.get("stream") if self._resume else None
        if self.lockstep:
            build = lambda: self._batches_from(start, stream_state)
            self._batches = self.lockstep.register(start, self.total_steps, build)
        else:
            # Under DDP (the strategy is set up before the loaders), this rank's rows of every batch.
            shard = Shard(self.trainer.global_rank, self.trainer.world_size)
            self._batches = self._batches_from(start, stream_state, shard)
        return self._batches

    def state_dict(self) -> dict:
        step = self.trainer.global_step
        if self.cached or self._batches is None:
            return {"step": step}
        return {"step": step, "stream": self._batches.state_at(step)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict
