"""Hook activations from the language model, token by token, and the shuffle buffer that mixes them.

The forward stops at the hooked layer; BOS positions (an outlier activation) are dropped. The buffer
mixes tokens from many contexts so that a batch is not a few documents' worth of tokens in a row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from sae.lm.bridge import bos_token_id, hook_name
from sae.lm.config import ModelConfig
from sae.text.contexts import batched, iter_contexts, iter_texts
from sae.text.sources import DataConfig


def harvest(
    bridge,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    batch_size: int,
    split: str = "train",
    skip_contexts: int = 0,
    every: int = 1,
    offset: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield [n_tokens, d] activations per model batch of `batch_size` contexts, BOS positions dropped.

    The forward stops at the hook's layer. `skip_contexts` starts later in the split: the skipped
    contexts are tokenized again but never run through the model. `every`, `offset`: only model
    batches offset, offset + every, ... (of those after the skipped contexts), as one of `every`
    DDP ranks harvests its share of the stream.
    """
    bos = bos_token_id(bridge)
    name = hook_name(model_cfg)
    contexts = iter_contexts(iter_texts(data_cfg, split), bridge.tokenizer, data_cfg.context_length, bos)
    contexts = itertools.islice(contexts, skip_contexts, None)
    device = bridge.cfg.device
    for index, tokens in enumerate(batched(contexts, batch_size)):
        if index % every != offset:
            continue
        # Inference mode only around the forward: entered across a `yield`, it would stay on in the
        # consumer's code too (it is thread state), and a training step there would get no gradients.
        with torch.inference_mode():
            tokens = tokens.to(device)
            _, cache = bridge.run_with_cache(tokens, names_filter=name, stop_at_layer=model_cfg.layer + 1)
            acts = cache[name][tokens != bos].float().cpu()
        yield acts.clone()  # an ordinary tensor, usable in autograd


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
        data = torch.cat(self._chunks)
        perm = torch.randperm(len(data), generator=self.generator)
        out, keep = data[perm[:n]], data[perm[n:]]
        self._chunks, self._size = ([keep] if len(keep) else []), len(keep)
        return out
