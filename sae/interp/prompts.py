"""The prompts of Bills et al. (2023), "Language models can explain neurons in language models".

Activations are shown quantised to integers 0..10 as "token<TAB>activation" lines between
<start>/<end>; the explainer completes "the main thing this feature does is find ...", and the
simulator sees "token<TAB>unknown" lines. Changing any text here changes PROMPT_VERSION, which
keys stored results, so old answers are never mixed with new prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

PROMPT_VERSION = "bills2023-v1"
EXPLANATION_PREFIX = "the main thing this feature does is find"
MAX_VALUE = 10

INTRO = "We're studying features in a neural network. Each feature looks for some particular thing in a short document."
EXPLAIN_SYSTEM = (
    f"{INTRO} Look at the parts of the document the feature activates for and summarize in a single sentence "
    "what the feature is looking for. Don't list examples of words.\n\n"
    "The activation format is token<tab>activation. Activation values range from 0 to 10. A feature finding what "
    "it's looking for is represented by a non-zero activation value. The higher the activation value, the stronger the match."
)
SIMULATE_HEADER = (
    f"{INTRO} Look at an explanation of what the feature does, and try to predict its activations on each token.\n\n"
    'The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates an unknown '
    "activation. Most activations will be 0.\n\n"
)
INTEGERS_SYSTEM = (
    f"{INTRO} Given an explanation of what a feature does, predict its activation on each token of a document.\n"
    'Copy every line between <start> and <end>, replacing "unknown" with an integer from 0 to 10 '
    "(0 = the feature is inactive, 10 = its strongest activation). Most activations are 0. Reply with the lines only."
)

# Hand-written few-shot examples (token, activation 0..10), shared by explainer and simulator.
FEW_SHOT = [
    {
        "explanation": "years and dates",
        "records": [
            [
                ("He", 0),
                (" was", 0),
                (" born", 0),
                (" in", 0),
                (" 1887", 10),
                (" and", 0),
                (" died", 0),
                (" in", 0),
                (" 1952", 9),
                (".", 0),
            ],
            [
                ("The", 0),
                (" treaty", 0),
                (" of", 0),
                (" May", 4),
                (" 1648", 10),
                (" ended", 0),
                (" the", 0),
                (" war", 0),
                (".", 0),
            ],
        ],
    },
    {
        "explanation": "words about water and the sea",
        "records": [
            [
                ("The", 0),
                (" ship", 3),
                (" sailed", 2),
                (" across", 0),
                (" the", 0),
                (" ocean", 10),
                (" to", 0),
                (" the", 0),
                (" harbor", 6),
                (".", 0),
            ],
            [
                ("A", 0),
                (" river", 8),
                (" flows", 3),
                (" into", 0),
                (" the", 0),
                (" lake", 7),
                (" near", 0),
                (" town", 0),
                (".", 0),
            ],
        ],
    },
]


def quantise(acts: Sequence[float], max_activation: float) -> list[int]:
    """min(10, floor(10 · relu(a) / max_a)); all zeros when the unit never fired."""
    if max_activation <= 0:
        return [0 for _ in acts]
    return [min(MAX_VALUE, math.floor(MAX_VALUE * max(0.0, float(a)) / max_activation)) for a in acts]


def show(token: str) -> str:
    """One token on one line: newlines and tabs written out so the line format survives."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def record_block(tokens: Sequence[str], values: Sequence[int | str]) -> str:
    lines = [f"{show(t)}\t{v}" for t, v in zip(tokens, values, strict=False)]
    return "<start>\n" + "\n".join(lines) + "\n<end>\n"


def explain_user_message(index: int, records: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """Bills's explainer turn: the records, then, when under 20% of tokens are nonzero, the nonzero ones again."""
    blocks = [record_block(toks, vals) for toks, vals in records]
    all_vals = [v for _, vals in records for v in vals]
    text = f"Feature {index}\nActivations:\n" + "".join(blocks)
    if all_vals and sum(v > 0 for v in all_vals) < 0.2 * len(all_vals):
        nonzero = [
            record_block([t for t, v in zip(toks, vals, strict=False) if v > 0], [v for v in vals if v > 0])
            for toks, vals in records
        ]
        text += "\nSame activations, but with all zeros filtered out:\n" + "".join(nonzero)
    return text + f"\nExplanation of feature {index} behavior: {EXPLANATION_PREFIX}"


def explain_messages(records: Sequence[tuple[Sequence[str], Sequence[int]]]) -> list[dict]:
    """Chat messages: system, the few-shot examples as user/assistant turns, then the unit's records."""
    messages = [{"role": "system", "content": EXPLAIN_SYSTEM}]
    for i, ex in enumerate(FEW_SHOT, start=1):
        recs = [([t for t, _ in r], [v for _, v in r]) for r in ex["records"]]
        messages.append({"role": "user", "content": explain_user_message(i, recs)})
        messages.append({"role": "assistant", "content": f" {ex['explanation']}."})
    messages.append({"role": "user", "content": explain_user_message(len(FEW_SHOT) + 1, records)})
    return messages


def parse_explanation(text: str, truncated: bool) -> str:
    """The explanation sentence; raises MalformedCompletion when there is none or it was cut off."""
    text = text.strip()
    low = text.lower()
    if low.startswith(EXPLANATION_PREFIX):
        text = text[len(EXPLANATION_PREFIX) :].strip()
    lines = text.split("\n")
    text = lines[0].strip()
    if truncated and len(lines) == 1:  # cut off inside the first line (a finished line is a finished answer)
        end = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
        if end <= 0:
            raise MalformedCompletion(f"truncated completion (hit the token limit before the sentence ended): {text[:80]!r}")
        text = text[:end]
    text = text.rstrip(". ").strip()
    if not re.search(r"[A-Za-z0-9]", text):
        raise MalformedCompletion(f"malformed completion: no explanation in {text[:80]!r}")
    return text


def simulate_prompt(explanation: str, tokens: Sequence[str]) -> tuple[str, list[str]]:
    """All-at-once simulator prompt as text pieces: (prefix up to the target's first line, one piece per token line).

    Kept as pieces so a local tokenizer can encode each separately and know where every "unknown" is.
    """
    parts = [SIMULATE_HEADER]
    for i, ex in enumerate(FEW_SHOT, start=1):
        parts.append(
            f"Feature {i}\nExplanation of feature {i} behavior: {EXPLANATION_PREFIX} {ex['explanation']}\nActivations:\n"
        )
        for rec in ex["records"]:
            parts.append(record_block([t for t, _ in rec], [v for _, v in rec]))
        parts.append("\n")
    n = len(FEW_SHOT) + 1
    parts.append(f"Feature {n}\nExplanation of feature {n} behavior: {EXPLANATION_PREFIX} {explanation}\nActivations:\n<start>\n")
    return "".join(parts), [f"{show(t)}\t" for t in tokens]


def simulate_text(explanation: str, tokens: Sequence[str]) -> str:
    """The same prompt as one string, for servers that tokenise it themselves."""
    prefix, lines = simulate_prompt(explanation, tokens)
    return prefix + "".join(line + "unknown\n" for line in lines) + "<end>\n"


def integers_messages(explanation: str, tokens: Sequence[str]) -> list[dict]:
    """Log-probability-free fallback: the chat model rewrites each line with an integer."""
    ex = FEW_SHOT[0]
    rec = ex["records"][0]
    messages = [{"role": "system", "content": INTEGERS_SYSTEM}]
    for expl, toks, vals in ((ex["explanation"], [t for t, _ in rec], [v for _, v in rec]),):
        messages.append({"role": "user", "content": integers_user(expl, toks)})
        messages.append({"role": "assistant", "content": record_block(toks, vals)})
    messages.append({"role": "user", "content": integers_user(explanation, tokens)})
    return messages


def integers_user(explanation: str, tokens: Sequence[str]) -> str:
    return f"Explanation: {EXPLANATION_PREFIX} {explanation}\n" + record_block(tokens, ["unknown"] * len(tokens))


def parse_integers(text: str, n_tokens: int, truncated: bool) -> list[float]:
    """One integer (clipped to 0..10) per line; raises MalformedCompletion unless there are exactly n_tokens lines."""
    if truncated:
        raise MalformedCompletion("truncated completion: hit the token limit before all lines were written")
    body = text
    if "<start>" in body:
        body = body.split("<start>", 1)[1]
    body = body.split("<end>", 1)[0]
    lines = [ln for ln in body.split("\n") if ln.strip()]
    values = []
    for ln in lines:
        found = re.findall(r"-?\d+", ln.rsplit("\t", 1)[-1]) or re.findall(r"-?\d+", ln)
        if not found:
            raise MalformedCompletion(f"malformed completion: no integer on line {ln[:60]!r}")
        values.append(float(min(MAX_VALUE, max(0, int(found[-1])))))
    if len(values) != n_tokens:
        raise MalformedCompletion(f"malformed completion: expected {n_tokens} lines, got {len(values)}")
    return values


class MalformedCompletion(RuntimeError):
    """The model answered, but not in the format asked for (or was cut off)."""
