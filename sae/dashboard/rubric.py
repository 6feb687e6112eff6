"""The manual rubric (Bricken et al. 2023): a person scores a unit on four criteria, 0-5 each.

Ratings live in an SQLite file in the run's eval folder, one row per rating, committed before the
server answers. The report compares features with neurons: per criterion the number of ratings,
the mean and its 95% confidence interval (Student's t), and a histogram of each rating's mean over
the four criteria.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import unicodedata
from pathlib import Path
from typing import Optional

from scipy.stats import t

from sae.core.plots import plt, save_figure
from sae.core.tracking import LoggerConfig, build_logger, finish, log_results

CRITERIA = ("confidence", "activations", "logits", "specificity")
MAX_SCORE = 5
MAX_RATER = 64
MAX_NOTE = 2000
# What each level means; shown beside the form and in the report.
ANCHORS = {
    "confidence": [
        "no idea what it does",
        "a vague guess",
        "a pattern with many exceptions",
        "a plausible explanation",
        "confident in a clear explanation",
        "certain: a precise explanation",
    ],
    "activations": [
        "the activations contradict the explanation",
        "few activations fit it",
        "about half fit it",
        "most fit it",
        "nearly all fit it",
        "all fit it, and stronger activations are clearer cases",
    ],
    "logits": [
        "the promoted tokens are unrelated to the explanation (or none are shown)",
        "a few related tokens",
        "some related tokens among noise",
        "mostly related",
        "clearly what the explanation predicts",
        "exactly the tokens the explanation predicts",
    ],
    "specificity": [
        "fires on almost everything, no common thread",
        "many unrelated contexts",
        "a broad category",
        "a fairly narrow category",
        "a narrow category with rare exceptions",
        "only the explained thing",
    ],
}
KINDS = ("features", "neurons")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rater TEXT NOT NULL, kind TEXT NOT NULL, unit INTEGER NOT NULL, sae TEXT NOT NULL,
  confidence INTEGER NOT NULL, activations INTEGER NOT NULL, logits INTEGER NOT NULL, specificity INTEGER NOT NULL,
  note TEXT NOT NULL DEFAULT '', blind INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blind_queue (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rater TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL, unit INTEGER NOT NULL,
  rating_id INTEGER REFERENCES ratings(id)
);
"""


class RatingError(ValueError):
    """A rating that cannot be stored; the message names the field and the fix."""


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30)
    db.executescript(SCHEMA)
    return db


def shorten(value, limit: int = 40) -> str:
    """A value as it appears in an error message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_rater(value) -> str:
    """The rater's name, stripped: non-empty text of at most MAX_RATER characters, no control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_RATER:
        raise RatingError(f"rater must be a non-empty name of at most {MAX_RATER} characters")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise RatingError("rater must be a name without control characters (such as NUL or a newline)")
    return value.strip()


def validate(body: dict, n_units: dict[str, int]) -> dict:
    """The rating's fields, checked: rater, kind, unit (exists), four integer scores 0-5, note."""
    if not isinstance(body, dict):
        raise RatingError("the body must be a JSON object")
    rater = check_rater(body.get("rater"))
    kind, unit = body.get("kind"), body.get("unit")
    if not isinstance(kind, str) or kind not in n_units:
        raise RatingError(f"kind={shorten(kind)}: choose one of {sorted(n_units)}")
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < n_units[kind]:
        raise RatingError(f"unit={shorten(unit)}: {kind} are numbered 0..{n_units[kind] - 1}")
    scores = body.get("scores")
    if not isinstance(scores, dict) or set(scores) != set(CRITERIA):
        raise RatingError(f"scores must give exactly {list(CRITERIA)}")
    for name in CRITERIA:
        v = scores[name]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SCORE:
            raise RatingError(f"scores.{name}={shorten(v)}: an integer 0..{MAX_SCORE}")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise RatingError(f"note must be text of at most {MAX_NOTE} characters")
    return {"rater": rater, "kind": kind, "unit": unit, "note": note, **{c: scores[c] for c in CRITERIA}}


def insert(db: sqlite3.Connection, rating: dict, sae: str, blind: bool = False) -> int:
    cur = db.execute(
        "INSERT INTO ratings (rater, kind, unit, sae, confidence, activations, logits, specificity, note, blind, created)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            rating["rater"],
            rating["kind"],
            rating["unit"],
            sae,
            *(rating[c] for c in CRITERIA),
            rating["note"],
            int(blind),
            time.time(),
        ),
    )
    return int(cur.lastrowid)


def unit_means(path: Path, sae: Optional[str] = None) -> dict[str, dict[int, float]]:
    """Mean rubric score (over criteria and ratings) per kind and unit."""
    if not Path(path).exists():
        return {}
    db = connect(path)
    try:
        q = "SELECT kind, unit, AVG((confidence + activations + logits + specificity) / 4.0) FROM ratings"
        rows = db.execute(q + (" WHERE sae = ?" if sae else "") + " GROUP BY kind, unit", (sae,) if sae else ()).fetchall()
    finally:
        db.close()
    out: dict[str, dict[int, float]] = {}
    for kind, unit, mean in rows:
        out.setdefault(kind, {})[int(unit)] = round(float(mean), 3)
    return out


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% confidence interval (Student's t; none with fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def summarise(path: Path, sae: Optional[str] = None) -> dict:
    """Per kind: each criterion's and the overall (mean of the four) n, mean, sd, 95% CI."""
    db = connect(path)
    try:
        q = f"SELECT kind, blind, {', '.join(CRITERIA)} FROM ratings" + (" WHERE sae = ?" if sae else "")
        rows = db.execute(q, (sae,) if sae else ()).fetchall()
    finally:
        db.close()
    out = {}
    for kind in KINDS:
        mine = [r for r in rows if r[0] == kind]
        entry = {c: mean_ci([float(r[2 + i]) for r in mine]) for i, c in enumerate(CRITERIA)}
        entry["overall"] = mean_ci([sum(r[2:]) / len(CRITERIA) for r in mine])
        entry["n_blind"] = sum(int(r[1]) for r in mine)
        entry["overall_values"] = [sum(r[2:]) / len(CRITERIA) for r in mine]
        out[kind] = entry
    return out


def _fmt(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    ci = f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s["ci95"] else ""
    return f"{s['mean']:.2f}{ci}"


def markdown_table(summary: dict) -> str:
    head = "| units | ratings (blind) | " + " | ".join(CRITERIA) + " | overall |\n"
    head += "|---" * (len(CRITERIA) + 3) + "|\n"
    for kind, e in summary.items():
        head += (
            f"| {kind} | {e['overall']['n']} ({e['n_blind']}) | "
            + " | ".join(_fmt(e[c]) for c in CRITERIA)
            + f" | {_fmt(e['overall'])} |\n"
        )
    return head + "\nMean score 0-5 with its 95% confidence interval (Student's t).\n"


def plot_histogram(summary: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 4 - 0.125 for i in range(4 * MAX_SCORE + 2)]
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange"), strict=False):
        vals = summary[kind]["overall_values"]
        if vals:
            ax.hist(
                vals, bins=bins, alpha=0.6, color=colour, label=f"{kind} (n={len(vals)}, mean {_fmt(summary[kind]['overall'])})"
            )
    ax.set_xlabel("rubric score (mean of the four criteria, 0-5)")
    ax.set_ylabel("units")
    ax.set_title("How interpretable is the typical unit? (manual rubric)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def report(db_path: Path, out_dir: Path, sae: Optional[str] = None, logger_cfg=None, run_name: str = "rubric") -> dict:
    """rubric_report.json / .md / .png in out_dir, logged to W&B (or CSV) when a logger is given."""
    if not Path(db_path).exists():
        raise FileNotFoundError(f"no ratings yet: {db_path} does not exist; rate units in the browser (stage=serve) first.")
    summary = summarise(db_path, sae)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rubric_report.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "rubric_report.md").write_text(markdown_table(summary))
    png = plot_histogram(summary, out_dir / "rubric_histogram.png")
    if logger_cfg is not None:
        log(summary, png, out_dir, logger_cfg, run_name)
    print(markdown_table(summary))
    return summary


def log(summary: dict, png: Path, out_dir: Path, logger_cfg: LoggerConfig, run_name: str) -> None:
    numbers = {
        f"rubric/{kind}/{c}_{k}": e[c][k] for kind, e in summary.items() for c in (*CRITERIA, "overall") for k in ("mean", "n")
    }
    numbers = {k: v for k, v in numbers.items() if v is not None}
    columns = ["units", "criterion", "n", "mean", "ci_low", "ci_high"]
    rows = [
        [kind, c, e[c]["n"], e[c]["mean"], *(e[c]["ci95"] or [None, None])]
        for kind, e in summary.items()
        for c in (*CRITERIA, "overall")
    ]
    logger = build_logger(logger_cfg, out_dir, run_name, {"rubric": True}, job_type="rubric")
    log_results(logger, numbers, images={"rubric/histogram": png}, tables={"rubric/table": (columns, rows)})
    finish(logger, numbers)
