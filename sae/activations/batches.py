"""Training batches in a resumable order: from the cache by per-pass permutations, or streamed from the model.

From the cache: each pass over the cached tokens uses a fresh permutation (no token twice within
a pass), and the batch at step s depends only on (seed, s). Without a cache: activations stream
from the model through the shuffle buffer, and the checkpoint holds the stream's position (pass,
contexts read), the buffer's rows and generator state, and the rows not yet batched.

Batches come out on the training device: for a GPU, cached rows are gathered into pinned host memory
and copied without blocking (the next batch's gather overlaps the current step); streamed ones never
leave the device. Lightning's own transfer then has nothing left to do.

Several DDP ranks train on one batch: every rank makes the same whole batch and keeps its own slice,
`Shard` (rank r of N: rows [r·B/N, (r+1)·B/N)); together they see exactly the one-process batch, and the
state to resume from is the whole stream's, the same on every rank. Streamed, the ranks share the model's
work: rank r runs model batches r, r+N, ... and `chunks_of_all_ranks` hands every rank all of them in the
stream's order, so every rank feeds the same shuffle buffer with what one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sae.activations.cache import ActivationCache
from sae.activations.harvest import ShuffleBuffer
from sae.core.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `ranks` takes rows [rank·B/ranks, (rank+1)·B/ranks) of every batch of B rows."""

    rank: int = 0
    ranks: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.ranks:
            raise ValueError(f"rank {self.rank} is not one of {self.ranks} ranks")

    def check(self, batch_size: int) -> None:
        if batch_size % self.ranks:
            raise ConfigError(
                f"sae.batch_size={batch_size} does not split evenly between {self.ranks} processes "
                "(trainer.devices × trainer.num_nodes): choose a multiple of it."
            )

    def rows(self, batch_size: int) -> slice:
        size = batch_size // self.ranks
        return slice(self.rank * size, (self.rank + 1) * size)


WHOLE_BATCH = Shard()  # a single process: every row


def chunks_of_all_ranks(mine: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The stream of model batches whose every N-th one each of N ranks makes (`mine`: rank r's r-th, (r+N)-th, ...),
    on every rank, in the stream's order: a round of all_gathers per N chunks. It ends where the first rank runs out.
    """
    ranks = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    while True:
        chunk = next(mine, None)
        shape = torch.tensor(list(chunk.shape) if chunk is not None else [-1, -1], device=device)
        shapes = [torch.empty_like(shape) for _ in range(ranks)]
        dist.all_gather(shapes, shape)
        rows = [int(s[0]) for s in shapes]
        width = max(int(s[1]) for s in shapes)
        if width >= 0:
            padded = torch.zeros(max(rows), width, device=device)
            if chunk is not None:
                padded[: len(chunk)] = chunk.to(device)
            gathered = [torch.empty_like(padded) for _ in range(ranks)]
            dist.all_gather(gathered, padded)
            for n, rank_chunk in zip(rows, gathered, strict=True):
                if n < 0:
                    break
                yield rank_chunk[:n]  # on the GPU under NCCL, as a streamed chunk stays
        if min(rows) < 0:
            return


class CachedBatches:
    """Batches for steps [start_step, total_steps) drawn from a cache by per-pass permutations: `shard`'s rows of
    each, on `device`."""

    # Pinned buffers in flight: the batch being trained on, the one Lightning prefetched, the one being gathered.
    PINNED_BUFFERS = 3

    def __init__(
        self,
        cache: ActivationCache,
        batch_size: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
        shard: Shard = WHOLE_BATCH,
        device: torch.device | str = "cpu",
    ):
        if batch_size > len(cache):
            raise ValueError(
                f"sae.batch_size={batch_size} is larger than the cache ({len(cache)} tokens): "
                "lower it or raise activations.n_tokens."
            )
        shard.check(batch_size)
        self.cache, self.batch_size, self.total_steps, self.seed = cache, batch_size, total_steps, seed
        self.start_step = start_step
        self.steps_per_pass = len(cache) // batch_size
        self.device = torch.device(device)
        self.shard = shard

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.cache), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def _indices(self) -> Iterator[torch.Tensor]:
        step = self.start_step
        perm_epoch, perm = -1, None
        mine = self.shard.rows(self.batch_size)
        while step < self.total_steps:
            epoch, i = divmod(step, self.steps_per_pass)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, self._permutation(epoch)
            yield perm[i * self.batch_size : (i + 1) * self.batch_size][mine]
            step += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.device.type != "cuda":
            for index in self._indices():
                yield self.cache.rows(index).to(self.device)
            return
        yield from self._pinned_copies()

    def _pinned_copies(self) -> Iterator[torch.Tensor]:
        """Rows gathered into a ring of pinned host buffers (in the cache's own dtype: half the bytes of float32
        for a float16 cache), each copied to the GPU without blocking and made float32 there. A buffer is
        written again only once its copy has completed."""
        shape = (self.batch_size // self.shard.ranks, self.cache.d)  # this rank's rows
        buffers = [torch.empty(shape, dtype=self.cache.storage_dtype, pin_memory=True) for _ in range(self.PINNED_BUFFERS)]
        copied: list[torch.cuda.Event | None] = [None] * self.PINNED_BUFFERS
        for n, index in enumerate(self._indices()):
            slot = n % self.PINNED_BUFFERS
            if copied[slot] is not None:
                copied[slot].synchronize()
            self.cache.gather(index, out=buffers[slot])
            batch = buffers[slot].to(self.device, non_blocking=True)
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
            yield batch.float()


class StreamedBatches:
    """Batches straight from the model, through the shuffle buffer; a new pass starts when the data runs out.

    `chunks_from(n)` yields activations of consecutive model batches of `contexts_per_chunk` contexts,
    starting after the first n contexts of the split. After each batch the iterator notes its state
    (by reference, so it costs nothing); `state_at(step)` returns the state after `step` batches, which
    Lightning asks for while the next batch is already prefetched.
    """

    KEEP_SNAPSHOTS = 8

    def __init__(
        self,
        chunks_from: Callable[[int], Iterator[torch.Tensor]],
        contexts_per_chunk: int,
        batch_size: int,
        total_steps: int,
        buffer_tokens: int,
        seed: int,
        state: dict | None = None,
        shard: Shard = WHOLE_BATCH,
    ):
        shard.check(batch_size)
        self.shard = shard
        self.chunks_from, self.contexts_per_chunk = chunks_from, contexts_per_chunk
        self.batch_size, self.total_steps, self.buffer_tokens, self.seed = batch_size, total_steps, buffer_tokens, seed
        self.start = state or {"step": 0, "pass": 0, "contexts": 0, "rest": torch.empty(0), "buffer": None}
        self.snapshots: dict[int, dict] = {self.start["step"]: self.start}

    def _buffer(self, pass_index: int) -> ShuffleBuffer:
        return ShuffleBuffer(self.buffer_tokens, self.seed * 100_003 + pass_index)

    def __iter__(self) -> Iterator[torch.Tensor]:
        step, pass_index, contexts, rest = self.start["step"], self.start["pass"], self.start["contexts"], self.start["rest"]
        buffer = self._buffer(pass_index)
        if self.start["buffer"] is not None:
            buffer.load_state_dict(self.start["buffer"])
        mine = self.shard.rows(self.batch_size)
        while step < self.total_steps:
            fresh_pass = contexts == 0 and not buffer.state_dict()["chunks"]
            produced = False

            def counted(start: int) -> Iterator[torch.Tensor]:
                nonlocal contexts
                for chunk in self.chunks_from(start):
                    contexts += self.contexts_per_chunk
                    yield chunk

            for emitted in buffer(counted(contexts)):
                produced = True
                # (a resumed stream's rest comes from the host-side checkpoint)
                rest = emitted if not len(rest) else torch.cat([rest.to(emitted.device), emitted])
                while len(rest) >= self.batch_size and step < self.total_steps:
                    batch, rest, step = rest[: self.batch_size], rest[self.batch_size :], step + 1
                    self._note(step, pass_index, contexts, rest, buffer)
                    yield batch[mine]
                if step >= self.total_steps:
                    return
            if fresh_pass and not produced:
                raise ValueError("the data source produced no tokens; check data.* (files, split, text_column).")
            pass_index, contexts = pass_index + 1, 0
            buffer = self._buffer(pass_index)
            self._note(step, pass_index, contexts, rest, buffer)

    def _note(self, step: int, pass_index: int, contexts: int, rest: torch.Tensor, buffer: ShuffleBuffer) -> None:
        self.snapshots[step] = {
            "step": step,
            "pass": pass_index,
            "contexts": contexts,
            "rest": rest,
            "buffer": buffer.state_dict(),
        }
        for old in [s for s in self.snapshots if s <= step - self.KEEP_SNAPSHOTS]:
            del self.snapshots[old]

    def position(self, step: int) -> int:
        """Contexts of the current pass read into the buffer after `step` batches."""
        return self._snapshot(step)["contexts"]

    def state_at(self, step: int) -> dict:
        """The state after `step` batches, as plain host tensors for a checkpoint (resumable on any device)."""
        snap = self._snapshot(step)
        buffer = snap["buffer"]
        if buffer is not None:
            chunks = buffer["chunks"]
            rows = torch.cat([chunk.cpu() for chunk in chunks]) if chunks else None  # some may be a resumed run's, on the host
            buffer = {"chunks": (rows,) if chunks else (), "generator": buffer["generator"].clone()}
        return {**snap, "rest": snap["rest"].to("cpu", copy=True), "buffer": buffer}

    def _snapshot(self, step: int) -> dict:
        if step not in self.snapshots:
            raise RuntimeError(f"no stream state recorded for step {step} (recorded: {sorted(self.snapshots)})")
        return self.snapshots[step]
