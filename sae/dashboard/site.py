"""The static site: index.html, app.js and style.css from the package, and the data as small
JavaScript files that the page loads with <script> tags when it needs them.

Script files (not JSON fetched with XHR) let the same folder open straight from disk (file://) with
no server; the server adds only rating and on-demand sampling. Per-unit data is split into chunk
files of `part_units` units, so the index of an 18,432-feature SAE loads only its columns.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional

from sae.core.files import atomic_write_text, finite_or_none
from sae.dashboard.data import load_extras, load_part
from sae.dashboard.logits import NORM_NOTE
from sae.dashboard.rubric import ANCHORS, CRITERIA, MAX_SCORE, unit_means

STATIC = ("index.html", "app.js", "style.css")


def js_call(fn: str, *args) -> str:
    """`DASH.fn(args...);` with the arguments as JSON (valid JavaScript literals)."""
    body = ",".join(json.dumps(a, separators=(",", ":")) for a in args)  # NaN is a JavaScript literal too
    return f"DASH.{fn}({body});\n"


def parse_js_call(text: str) -> list:
    """The arguments of a file written by `js_call` (the server reads chunks back for blind mode)."""
    start, end = text.index("(") + 1, text.rstrip().rindex(")")
    return json.loads("[" + text[start:end] + "]")


def copy_static(site: Path) -> None:
    pkg = resources.files("sae.dashboard") / "static"
    for name in STATIC:
        (site / name).write_bytes((pkg / name).read_bytes())


def interp_columns(eval_dir: Path, kind: str) -> dict[int, dict]:
    """Explanation, Spearman and wrong-explanation control per unit, when the interp stage ran."""
    path = eval_dir / "interp" / f"scores_{kind}.jsonl"
    if not path.exists():
        return {}
    primary = None
    summary = eval_dir / "interp_summary.json"
    if summary.exists():
        primary = (json.loads(summary.read_text()).get(kind) or {}).get("primary_method")
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("status") != "ok" or (primary and row.get("method") != primary):
            continue
        split = next((k for k in ("top_and_random", "random_only", "quantiles") if k in row), None)
        out[int(row["unit"])] = {
            "explanation": row.get("explanation", ""),
            "method": row.get("method"),
            "split": split,
            "spearman": (row.get(split) or {}).get("spearman") if split else None,
            "control_spearman": (row.get(f"control_{split}") or {}).get("spearman") if split else None,
        }
    return out


def write_site(
    store_root: Path,
    site: Path,
    eval_dir: Path,
    indices: dict[str, dict],
    tokenizer_decode,
    summary: dict,
    sae_id: str,
    part_units: int,
    ratings_db: Optional[Path] = None,
) -> Path:
    """Write (or refresh) the site from the stored feature data; returns index.html."""
    site.mkdir(parents=True, exist_ok=True)
    copy_static(site)
    used: set[int] = set()
    ratings = unit_means(ratings_db, sae_id) if ratings_db else {}
    kinds = []
    for kind, index in indices.items():
        interp = interp_columns(eval_dir, kind)
        n_parts = -(-index["n_units"] // part_units)
        for p in range(n_parts):
            units = load_part(store_root, kind, p)
            ablation, steering = load_extras(store_root, kind, p)
            for u in units:
                u["ablation"] = ablation.get(str(u["unit"]))
                u["steering"] = steering.get(str(u["unit"]))
                u["interp"] = interp.get(u["unit"])
                for r in u["records"]:
                    used.update(r["tokens"])
                for block in (u["logits"] or {}, u["ablation"] or {}):
                    for key in ("promoted", "suppressed"):
                        used.update(t for t, _ in block.get(key, []))
            atomic_write_text(site / "data" / kind / f"chunk_{p:04d}.js", js_call("chunk", kind, p, units))
        for tops in index["top_tokens"]:
            used.update(tops)
        columns = {k: index[k] for k in ("density", "max_activation", "mean_activation", "fired_contexts", "top_tokens")}
        columns["explanation"] = {str(u): v["explanation"] for u, v in interp.items()}
        columns["spearman"] = {str(u): v["spearman"] for u, v in interp.items()}
        columns["rubric"] = {str(u): v for u, v in ratings.get(kind, {}).items()}
        atomic_write_text(
            site / "data" / kind / "index.js",
            js_call(
                "index",
                kind,
                finite_or_none({"n_units": index["n_units"], "n_tokens": index["n_tokens"], "part_units": part_units, **columns}),
            ),
        )
        kinds.append(kind)
    vocab = {str(i): tokenizer_decode([i]) for i in sorted(used)}
    atomic_write_text(site / "data" / "vocab.js", js_call("vocab", vocab))
    meta = {
        **summary,
        "kinds": kinds,
        "sae_id": sae_id,
        "norm_note": NORM_NOTE,
        "rubric": {"criteria": list(CRITERIA), "max": MAX_SCORE, "anchors": ANCHORS},
    }
    atomic_write_text(site / "data" / "summary.js", js_call("summary", finite_or_none(meta)))
    return site / "index.html"
