"""Evaluation corpora other than the training data: conf/data entries named on the command line, and the
per-corpus table (`eval_corpora=[wiki,mixed,shakespeare]` in evaluate.py).

A corpus is read with the SAE's own context length (so every corpus is cut into the same windows as the
training data) and its entry's held-out split; metrics come from its held-out documents only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sae.core.checks import config_from_dict
from sae.core.errors import ConfigError
from sae.text.sources import DataConfig

# metrics_by_corpus.md: column -> (key of a corpus's metrics, format)
CORPUS_COLUMNS = {
    "recon. score": ("reconstruction_score", "{:.3f}"),
    "KL score": ("kl_score", "{:.3f}"),
    "L0": ("l0", "{:.1f}"),
    "expl. var.": ("explained_variance", "{:.3f}"),
    "CE clean": ("ce_clean", "{:.3f}"),
    "CE zero-abl.": ("ce_zero_ablated", "{:.3f}"),
    "CE recon.": ("ce_reconstructed", "{:.3f}"),
    "CE tokens": ("ce_tokens", "{:,}"),
    "held-out tokens": ("heldout_tokens", "{:,}"),
}


def _entries(conf_dir: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        node = OmegaConf.load(path)
        entries[path.stem] = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "defaults"}
    return entries


def corpus_configs(names: list[str], conf_dir: Path, training: DataConfig) -> dict[str, DataConfig]:
    """DataConfig per name, from `conf_dir/<name>.yaml` or the entry whose alias is `name`, with the training
    data's context length. A name that is neither fails naming the choices."""
    entries = _entries(conf_dir)
    by_alias = {str(e.get("alias")): stem for stem, e in entries.items() if "${" not in str(e.get("alias"))}
    out = {}
    for name in names:
        stem = name if name in entries else by_alias.get(name)
        if stem is None:
            choices = sorted({*entries, *by_alias})
            raise ConfigError(f"eval_corpora: no corpus {name!r}; choose from {choices} (conf/data entries or their aliases).")
        entry = OmegaConf.to_container(OmegaConf.create(entries[stem]), resolve=True)
        out[name] = config_from_dict(DataConfig, entry, {"context_length": training.context_length})
    return out


def corpus_table(by_corpus: dict[str, dict[str, Any]]) -> str:
    """The metrics of each corpus as a markdown table (– where a part was skipped)."""
    lines = ["| corpus | " + " | ".join(CORPUS_COLUMNS) + " |", "|---|" + "---|" * len(CORPUS_COLUMNS)]
    for name, metrics in by_corpus.items():
        cells = [name]
        for key, fmt in CORPUS_COLUMNS.values():
            value = metrics.get(key)
            cells.append("–" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
