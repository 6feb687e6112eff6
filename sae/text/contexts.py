"""A source's documents, split into training and held-out, cut into fixed-length token contexts that start with BOS.

Every `holdout_every`-th document goes to the held-out split (evaluation, interpretability
records) and never into training, whatever the source.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sae.text.sources import DataConfig, load_documents


def iter_texts(cfg: DataConfig, split: str) -> Iterator[str]:
    """Documents of one split ("train" or "heldout"), in order."""
    if split not in ("train", "heldout"):
        raise ValueError(split)
    want_heldout = split == "heldout"
    for i, row in enumerate(load_documents(cfg)):
        if ((i % cfg.holdout_every) == cfg.holdout_every - 1) == want_heldout:
            text = row["text"]
            if text:
                yield text


def iter_contexts(
    texts: Iterator[str], tokenizer, context_length: int, bos_id: int, batch_docs: int = 64
) -> Iterator[torch.Tensor]:
    """Pack documents (joined by BOS) into rows of `context_length` tokens, each starting with BOS."""
    body = context_length - 1
    pending: list[int] = []
    docs: list[str] = []

    def drain() -> Iterator[torch.Tensor]:
        nonlocal pending
        while len(pending) >= body:
            yield torch.tensor([bos_id] + pending[:body], dtype=torch.long)
            pending = pending[body:]

    for text in texts:
        docs.append(text)
        if len(docs) == batch_docs:
            for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
                pending.extend(ids + [bos_id])
            docs = []
            yield from drain()
    if docs:
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            pending.extend(ids + [bos_id])
    yield from drain()


def batched(rows: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def heldout_tokens(tokenizer, data_cfg: DataConfig, n_tokens: int, bos_id: int) -> torch.Tensor:
    """The first ⌈n_tokens / context_length⌉ held-out contexts, [n_contexts, context_length]."""
    n_contexts = max(1, -(-n_tokens // data_cfg.context_length))
    rows = []
    for row in iter_contexts(iter_texts(data_cfg, "heldout"), tokenizer, data_cfg.context_length, bos_id):
        rows.append(row)
        if len(rows) == n_contexts:
            break
    if not rows:
        raise ValueError("the held-out split produced no tokens; check data.* and data.holdout_every.")
    return torch.stack(rows)
