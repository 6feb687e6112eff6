"""Training batches in a resumable order: from the cache by per-pass permutations, or streamed from the model.

From the cache: each pass over the cached tokens uses a fresh permutation (no token twice within
a pass), and the batch at step s depends only on (seed, s). Without a cache: activations stream
from the model through the shuffle buffer, and the checkpoint holds the stream's position (pass,
contexts read), the buffer's rows and generator state, and the rows not yet batched.

Batches come out on the training device: for a GPU, cached rows are gathered into pinned host memory
and copied without blocking (the next batch's gather overlaps the current step); streamed ones never
leave the device. Lightning's own transfer then has nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from sae.activations.cache import ActivationCache
from sae.activations.harvest import ShuffleBuffer


class CachedBatches:
    """Batches for steps [start_step, total_steps) drawn from a cache by per-pass permutations, on `device`."""

    # Pinned buffers in flight: the batch being trained on, the one Lightning prefetched, the one being gathered.
    PINNED_BUFFERS = 3

    def __init__(
        self,
        cache: ActivationCache,
        batch_size: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
        device: torch.device | str = "cpu",
    ):
        if batch_size > len(cache):
            raise ValueError(
                f"sae.batch_size={batch_size} is larger than the cache ({len(cache)} tokens): "
                "lower it or raise activations.n_tokens."
            )
        self.cache, self.batch_size, self.total_steps, self.seed = cache, batch_size, total_steps, seed
        self.start_step = start_step
        self.steps_per_pass = len(cache) // batch_size
        self.device = torch.device(device)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.cache), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def _indices(self) -> Iterator[torch.Tensor]:
        step = self.start_step
        perm_epoch, perm = -1, None
        while step < self.total_steps:
            epoch, i = divmod(step, self.steps_per_pass)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, self._permutation(epoch)
            yield perm[i * self.batch_size : (i + 1) * self.batch_size]
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
        shape = (self.batch_size, self.cache.d)
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
    ):
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
                    yield batch
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
