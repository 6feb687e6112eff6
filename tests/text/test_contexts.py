"""Text is split into train / held-out by document, never by line, and no document is on both sides."""

from sae.text.contexts import iter_texts
from sae.text.sources import DataConfig, load_documents


def _corpus(tmp_path, n_docs=40, lines=3):
    docs = ["\n".join(f"doc{d} line{i} some words" for i in range(lines)) for d in range(n_docs)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def test_paragraph_documents_stay_whole_on_one_side(tmp_path):
    cfg = DataConfig(source="local", alias="local", files=[str(_corpus(tmp_path))], holdout_every=4, streaming=False)
    train, heldout = list(iter_texts(cfg, "train")), list(iter_texts(cfg, "heldout"))
    docs_of = lambda texts: [{w for w in t.split() if w.startswith("doc")} for t in texts]  # noqa: E731
    assert all(len(d) == 1 for d in docs_of(train) + docs_of(heldout))  # one document per text ...
    assert all(t.count("line") == 3 for t in train + heldout)  # ... with all of its lines
    train_docs = set().union(*docs_of(train))
    heldout_docs = set().union(*docs_of(heldout))
    assert heldout_docs == {f"doc{d}" for d in range(3, 40, 4)}
    assert train_docs.isdisjoint(heldout_docs) and len(train_docs) == 30


def test_whole_files_as_documents(tmp_path):
    files = []
    for f in range(4):
        (tmp_path / str(f)).mkdir()
        files.append(str(_corpus(tmp_path / str(f), n_docs=2)))
    cfg = DataConfig(source="local", alias="local", files=files, holdout_every=2, sample_by="document", streaming=False)
    heldout = list(iter_texts(cfg, "heldout"))
    assert len(heldout) == 2 and all(t.count("line") == 6 for t in heldout)


def _split(cfg):
    train, heldout = list(iter_texts(cfg, "train")), list(iter_texts(cfg, "heldout"))
    everything = [row["text"] for row in load_documents(cfg) if row["text"]]
    return train, heldout, everything


def _assert_disjoint_and_complete(train, heldout, everything, holdout_every):
    assert heldout and train
    assert set(train).isdisjoint(heldout), "a held-out document is also trained on"
    assert sorted(train + heldout) == sorted(everything)  # every document on exactly one side
    assert len(heldout) == len(everything) // holdout_every or len(heldout) == -(-len(everything) // holdout_every)


def test_wiki_training_and_heldout_documents_are_disjoint():
    cfg = DataConfig(source="wiki_offline", alias="wiki", holdout_every=20)
    train, heldout, everything = _split(cfg)
    assert len(set(everything)) == len(everything), "the check needs distinct documents"
    _assert_disjoint_and_complete(train, heldout, everything, cfg.holdout_every)


def test_local_file_training_and_heldout_documents_are_disjoint(tmp_path):
    """Real prose (the wiki intros) written as a local text file, one paragraph per document."""
    wiki = [t.replace("\n\n", "\n") for t in iter_texts(DataConfig(source="wiki_offline", alias="wiki"), "train")][:300]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(wiki) + "\n")
    cfg = DataConfig(source="local", alias="local", files=[str(path)], holdout_every=7, streaming=False)
    train, heldout, everything = _split(cfg)
    assert len(everything) == 300 and len(set(everything)) == 300
    _assert_disjoint_and_complete(train, heldout, everything, cfg.holdout_every)
