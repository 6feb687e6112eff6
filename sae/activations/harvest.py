"""Hook activations from the language model, token by token, and the shuffle buffer that mixes them.

The forward stops at the hooked layer; BOS positions (an outlier activation) are dropped. The buffer
mixes tokens from many contexts so that a batch is not a few documents' worth of tokens in a row.
Activations stay on the model's device when training streams them (no round trip through the host).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sae.lm.bridge import bos_token_id, hook_name
from sae.lm.config import ModelConfig
from sae.text.contexts import batched, iter_contexts, iter_texts
from sae.text.sources import DataConfig

# The CPU's contexts per forward; on a GPU `auto_harvest_batch_size` sizes it to the device.
CPU_HARVEST_BATCH_SIZE = 32
# At most this many contexts per forward on a GPU: past it a forward is long enough to keep the device busy.
MAX_HARVEST_BATCH_SIZE = 1024


def auto_harvest_batch_size(bridge, context_length: int) -> int:
    """Contexts per forward when `activations.harvest_batch_size` is null: 32 on a CPU; on a GPU sized to its memory
    (`harvest_batch_size_for`).

    From the device's total memory, not what happens to be free, so that a resumed run picks the same size
    and a streamed run sees the same batches.
    """
    device = torch.device(bridge.cfg.device)
    if device.type != "cuda":
        return CPU_HARVEST_BATCH_SIZE
    cfg = bridge.cfg
    return harvest_batch_size_for(
        total_memory=torch.cuda.get_device_properties(device).total_memory,
        model_bytes=sum(p.numel() * p.element_size() for p in bridge.parameters()),
        element_bytes=next(bridge.parameters()).element_size(),
        d_model=cfg.d_model,
        d_mlp=getattr(cfg, "d_mlp", None) or 4 * cfg.d_model,
        n_heads=getattr(cfg, "n_heads", None) or 1,
        context_length=context_length,
    )


def harvest_batch_size_for(
    total_memory: int, model_bytes: int, element_bytes: int, d_model: int, d_mlp: int, n_heads: int, context_length: int
) -> int:
    """The largest power of two of contexts whose forward fits in a quarter of the device's memory beside the model
    (the rest is the SAE's, the shuffle buffer's and the allocator's), at most `MAX_HARVEST_BATCH_SIZE`.

    A context's forward holds one block's transient tensors at a time (residual stream, attention scores, MLP
    neurons) plus the float32 copy of the hook's activations; counted twice over for the allocator.
    """
    block = element_bytes * (8 * d_model + 4 * d_mlp + 2 * n_heads * context_length)
    per_context = 2 * context_length * (block + 4 * d_model)
    fits = max(1, (total_memory // 4 - model_bytes) // per_context)
    return int(min(MAX_HARVEST_BATCH_SIZE, 2 ** (int(fits).bit_length() - 1)))


def harvest(
    bridge,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    batch_size: int | None,
    split: str = "train",
    skip_contexts: int = 0,
    on_device: bool = False,
    every: int = 1,
    offset: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield [n_tokens, d] float32 activations per model batch of `batch_size` contexts, BOS positions dropped.

    The forward stops at the hook's layer. `skip_contexts` starts later in the split: the skipped
    contexts are tokenized again but never run through the model. `batch_size` None: sized to the device
    (`auto_harvest_batch_size`). `on_device`: keep the activations on the model's device (streamed training);
    otherwise they come to the host (the disk cache, statistics).
    `every`, `offset`: only model batches offset, offset + every, ... (of those after the skipped contexts),
    as one of `every` DDP ranks harvests its share of the stream.
    """
    bos = bos_token_id(bridge)
    name = hook_name(model_cfg)
    batch_size = batch_size or auto_harvest_batch_size(bridge, data_cfg.context_length)
    contexts = iter_contexts(iter_texts(data_cfg, split), bridge.tokenizer, data_cfg.context_length, bos)
    contexts = itertools.islice(contexts, skip_contexts, None)
    device = bridge.cfg.device
    for index, tokens in enumerate(batched(contexts, batch_size)):
        if index % every != offset:
            continue
        # Inference mode only around the forward: entered across a `yield`, it would stay on in the
        # consumer's code too (it is thread state), and a training step there would get no gradients.
        with torch.inference_mode(), full_float32_precision():
            tokens = tokens.to(device)
            _, cache = bridge.run_with_cache(tokens, names_filter=name, stop_at_layer=model_cfg.layer + 1)
            acts = cache[name][tokens != bos].float()
            if not on_device:
                acts = acts.cpu()
        yield acts.clone()  # an ordinary tensor, usable in autograd


@contextmanager
def full_float32_precision() -> Iterator[None]:
    """float32 products at full precision around a forward, whatever training set (trainer.float32_matmul_precision):
    the activations, and the cache harvested from them, must not depend on a training option."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class ShuffleBuffer:
    """Mixes tokens from many contexts: fill to capacity, then emit a random half, keep the rest."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._chunks: list[torch.Tensor] = []
        self._size = 0

    def __call__(self, stream: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for chunk in stream:
            self._chunks.append(chunk)
            self._size += len(chunk)
            if self._size >= self.capacity:
                yield self._emit(self._size // 2)
        if self._size:
            yield self._emit(self._size)

    def state_dict(self) -> dict:
        """The buffered rows (by reference; cheap) and the generator state: enough to continue identically."""
        return {"chunks": tuple(self._chunks), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._chunks = list(state["chunks"])
        self._size = sum(len(c) for c in self._chunks)
        self.generator.set_state(state["generator"])

    def _emit(self, n: int) -> torch.Tensor:
        device = self._chunks[-1].device  # a resumed buffer's rows come from a host-side checkpoint
        data = torch.cat([chunk.to(device) for chunk in self._chunks])
        perm = torch.randperm(len(data), generator=self.generator)
        out, keep = data[perm[:n]], data[perm[n:]]
        self._chunks, self._size = ([keep] if len(keep) else []), len(keep)
        return out
