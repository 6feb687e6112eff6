"""Training batches of activations for Lightning.

From the cache: each pass over the cached tokens uses a fresh permutation (no token twice
within a pass), and the batch at step s depends only on (seed, s), so a resumed run continues
exactly where it stopped. Without a cache: activations stream from the model through the
shuffle buffer.
"""

from __future__ import annotations

from typing import Callable, Iterator

import lightning as L
import torch

from sae.activations import ActivationCache, ShuffleBuffer


class CachedBatches:
    """Batches for steps [start, total) drawn from a cache by per-pass permutations."""

    def __init__(self, cache: ActivationCache, batch_size: int, total_steps: int, seed: int, start_step: Callable[[], int]):
        if batch_size > len(cache):
            raise ValueError(f"sae.batch_size={batch_size} is larger than the cache ({len(cache)} tokens): lower it or raise activations.n_tokens.")
        self.cache, self.batch_size, self.total_steps, self.seed = cache, batch_size, total_steps, seed
        self.start_step = start_step
        self.steps_per_pass = len(cache) // batch_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.cache), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self.start_step()
        perm_epoch, perm = -1, None
        while step < self.total_steps:
            epoch, i = divmod(step, self.steps_per_pass)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, self._permutation(epoch)
            yield self.cache.rows(perm[i * self.batch_size : (i + 1) * self.batch_size])
            step += 1


class StreamedBatches:
    """Batches straight from the model, through the shuffle buffer; the stream restarts when data runs out."""

    def __init__(self, activation_stream: Callable[[], Iterator[torch.Tensor]], batch_size: int, total_steps: int,
                 buffer_tokens: int, seed: int, start_step: Callable[[], int]):
        self.activation_stream, self.batch_size, self.total_steps = activation_stream, batch_size, total_steps
        self.buffer_tokens, self.seed, self.start_step = buffer_tokens, seed, start_step

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self.start_step()
        rest = torch.empty(0)
        while step < self.total_steps:
            produced = False
            for chunk in ShuffleBuffer(self.buffer_tokens, self.seed + step)(self.activation_stream()):
                produced = True
                rest = chunk if not len(rest) else torch.cat([rest, chunk])
                while len(rest) >= self.batch_size and step < self.total_steps:
                    yield rest[: self.batch_size]
                    rest, step = rest[self.batch_size :], step + 1
                if step >= self.total_steps:
                    return
            if not produced:
                raise ValueError("the data source produced no tokens; check data.* (files, split, text_column).")


class ActivationDataModule(L.LightningDataModule):
    def __init__(self, batches_factory: Callable[[Callable[[], int]], object]):
        super().__init__()
        self.batches_factory = batches_factory

    def train_dataloader(self):
        # Read the step lazily: Lightning restores a checkpoint before it iterates.
        return self.batches_factory(lambda: self.trainer.global_step if self.trainer else 0)
