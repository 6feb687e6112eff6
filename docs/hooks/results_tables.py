"""An mkdocs hook: `<!-- table: results/NAME.json -->` in a page becomes that result file's table and stamp.

A result file (written by a bench script's `--record`, bench/record.py) holds its rows together with the
command, commit, machine and date that produced them. The table is built from it at every build, never
copied by hand, so a page shows exactly what the file holds and where it came from. A marker may name the
command that produces the file (the marker stands alone on its line):

    <!-- table: results/sparse_step_cpu.json | python bench/sparse_step.py --record docs/results/sparse_step_cpu.json -->

and while the file does not exist the page says "not measured yet" and gives that command. A marker without
a command whose file is missing, or a file without its stamp, fails the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STAMP_FIELDS = ("command", "commit", "machine", "date")
# Alone on its line, so that the syntax can be quoted in running text.
MARKER = re.compile(r"^[ \t]*<!--\s*table:\s*(?P<path>[^\s|]+?)\s*(?:\|\s*(?P<command>.*?)\s*)?-->[ \t]*$", re.MULTILINE)


class RecordError(ValueError):
    """A result file the docs cannot show: missing, unreadable, or without its stamp or rows."""


def check_record(record: Any, where: str) -> None:
    """A record has every stamp field (non-empty text) and rows: a non-empty list of dicts with the same keys."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a result file holds one JSON object, not {type(record).__name__}.")
    missing = [f for f in STAMP_FIELDS if not isinstance(record.get(f), str) or not record[f].strip()]
    if missing:
        raise RecordError(f"{where}: no {', '.join(missing)}; write result files with a bench script's --record.")
    rows = record.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise RecordError(f"{where}: `rows` must be a non-empty list of objects (one per table row).")
    columns = list(rows[0])
    odd = [i for i, r in enumerate(rows) if list(r) != columns]
    if odd:
        raise RecordError(f"{where}: rows {odd} do not have the columns of the first row ({', '.join(columns)}).")


def load_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such result file.") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not JSON ({exc}).") from None
    check_record(record, str(path))
    return record


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def short_commit(commit: str) -> str:
    sha, dirty, _ = commit.partition("-dirty")
    return sha[:10] + ("-dirty" if dirty else "") if re.fullmatch(r"[0-9a-f]{40}", sha) else commit


def render_record(record: dict) -> str:
    """The table, then one stamp line: command, commit, machine, date (and the record's notes)."""
    columns = list(record["rows"][0])
    lines = [f"**{cell(record['title'])}**", ""] if record.get("title") else []
    lines.append("| " + " | ".join(cell(c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in record["rows"]]
    stamp = (
        f"Measured with `{record['command']}` at commit `{short_commit(record['commit'])}` "
        f"on {cell(record['machine'])}, {record['date']}."
    )
    lines += ["", f"<small>{stamp}</small>"]
    if record.get("notes"):
        lines += ["", f"<small>{cell(record['notes'])}</small>"]
    return "\n".join(lines)


def render_missing(command: str) -> str:
    return f'!!! note "Not measured yet"\n\n    Not measured yet: run `{command}`; the table appears here at the next build.'


def render_markers(markdown: str, docs_dir: Path, page: str = "a page") -> str:
    def replace(match: re.Match) -> str:
        path = docs_dir / match["path"]
        if not path.exists() and match["command"]:
            return render_missing(match["command"])
        try:
            return "\n" + render_record(load_record(path)) + "\n"
        except RecordError as exc:
            raise RecordError(f"{page}: {exc}") from None

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    return render_markers(markdown, Path(config["docs_dir"]), page.file.src_path)
