"""Local text files are split into train / held-out by document, never by line."""

from sae.text.contexts import iter_texts
from sae.text.sources import DataConfig


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
