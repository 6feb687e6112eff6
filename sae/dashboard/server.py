"""The local server of the feature browser: the site's files, ratings into SQLite, blind mode, and
pinned sampling on demand.

    python -m sae.dashboard.server SITE_DIR --db EVAL_DIR/ratings.sqlite [--host 127.0.0.1] [--port 8765]

It binds 127.0.0.1 unless told otherwise and serves only files inside the site folder. Every
rating is validated (the unit exists, four integer scores 0-5, bounded text) and committed to the
database before the answer is sent, so an acknowledged rating survives a crash.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from sae.dashboard import rubric
from sae.dashboard.site import parse_js_call

MAX_BODY = 16 * 1024
MAX_PROMPT = 200
MAX_MULTIPLE = 1000.0

# (kind, unit, multiple, prompt) -> {"multiple", "value", "samples"}; None: no model in this server.
Steerer = Callable[[str, int, float, str], dict]


class SiteData:
    """What the server knows of the site: unit counts, firing units, and unit pages by number."""

    def __init__(self, site: Path):
        self.site = site
        summary = parse_js_call((site / "data" / "summary.js").read_text())[0]
        self.sae_id = summary["sae_id"]
        self.kinds = summary["kinds"]
        self.n_units, self.firing, self.part_units, self.max_activation = {}, {}, {}, {}
        for kind in self.kinds:
            ix = parse_js_call((site / "data" / kind / "index.js").read_text())[1]
            self.n_units[kind] = ix["n_units"]
            self.part_units[kind] = ix["part_units"]
            self.firing[kind] = [u for u, d in enumerate(ix["density"]) if d and d > 0]
            self.max_activation[kind] = ix["max_activation"]

    def page(self, kind: str, unit: int) -> dict:
        p = unit // self.part_units[kind]
        units = parse_js_call((self.site / "data" / kind / f"chunk_{p:04d}.js").read_text())[2]
        return units[unit - p * self.part_units[kind]]


class Handler(SimpleHTTPRequestHandler):
    server: DashboardServer

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ------------------------------------------------------------ files
    def translate_path(self, path: str) -> str:
        """Only files inside the site folder: anything that resolves outside it maps to a missing file."""
        root = self.server.site
        rel = unquote(urlsplit(path).path).lstrip("/")
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            return str(root / "__outside__")
        return str(target)

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            return self.api_get(url.path, parse_qs(url.query))
        return super().do_GET()

    # ------------------------------------------------------------ JSON API
    def answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def read_json(self) -> Optional[dict]:
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self.answer(415, {"error": "send JSON with Content-Type: application/json"})
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.answer(411, {"error": "a Content-Length header is required"})
            return None
        if not 0 < length <= MAX_BODY:
            self.answer(413, {"error": f"the body must be 1..{MAX_BODY} bytes"})
            return None
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.answer(400, {"error": "the body is not valid JSON"})
            return None

    def api_get(self, path: str, query: dict) -> None:
        s = self.server
        if path == "/api/health":
            return self.answer(200, {"ok": True, "kinds": s.data.kinds, "steering": s.steerer is not None})
        if path == "/api/ratings":
            return self.answer(200, rubric.unit_means(s.db_path, s.data.sae_id))
        if path == "/api/blind/next":
            rater = (query.get("rater") or [""])[0].strip()
            if not rater or len(rater) > rubric.MAX_RATER:
                return self.answer(400, {"error": f"rater must be a non-empty name of at most {rubric.MAX_RATER} characters"})
            return self.answer(200, s.blind_next(rater))
        return self.answer(404, {"error": f"no such endpoint: {path}"})

    def do_POST(self):
        path = urlsplit(self.path).path
        if path not in ("/api/rating", "/api/steer"):
            return self.answer(404, {"error": f"no such endpoint: {path}"})
        body = self.read_json()
        if body is None:
            return
        try:
            if path == "/api/rating":
                return self.answer(201, self.server.save_rating(body))
            return self.answer(200, self.server.steer(body))
        except rubric.RatingError as exc:
            return self.answer(400, {"error": str(exc)})


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        site: Path,
        db_path: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        steerer: Optional[Steerer] = None,
        blind_per_kind: int = 20,
        seed: int = 0,
        verbose: bool = False,
    ):
        self.site = Path(site).resolve()
        if not (self.site / "index.html").is_file():
            raise FileNotFoundError(f"{self.site} has no index.html: write the site first (evaluate.py stage=dashboard).")
        self.data = SiteData(self.site)
        self.db_path = Path(db_path)
        self.steerer, self.blind_per_kind, self.seed, self.verbose = steerer, blind_per_kind, seed, verbose
        self.lock = threading.Lock()
        rubric.connect(self.db_path).close()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def _db(self) -> sqlite3.Connection:
        return rubric.connect(self.db_path)

    def save_rating(self, body: dict) -> dict:
        blind_item = body.get("blind_item") if isinstance(body, dict) else None
        with self.lock:
            db = self._db()
            try:
                if blind_item is not None:
                    if not isinstance(blind_item, int) or isinstance(blind_item, bool):
                        raise rubric.RatingError("blind_item must be the integer the blind queue gave")
                    row = db.execute(
                        "SELECT rater, kind, unit, rating_id FROM blind_queue WHERE id = ?", (blind_item,)
                    ).fetchone()
                    if row is None:
                        raise rubric.RatingError(f"blind_item={blind_item} is not in the blind queue")
                    if row[3] is not None:
                        raise rubric.RatingError(f"blind_item={blind_item} is already rated")
                    body = {**body, "kind": row[1], "unit": row[2]}
                    rating = rubric.validate(body, self.data.n_units)
                    if rating["rater"] != row[0]:
                        raise rubric.RatingError(f"blind_item={blind_item} belongs to another rater's queue")
                else:
                    rating = rubric.validate(body, self.data.n_units)
                rid = rubric.insert(db, rating, self.data.sae_id, blind=blind_item is not None)
                if blind_item is not None:
                    db.execute("UPDATE blind_queue SET rating_id = ? WHERE id = ?", (rid, blind_item))
                db.commit()  # before answering: an acknowledged rating is on disk
            finally:
                db.close()
        return {"id": rid, "kind": rating["kind"], "unit": rating["unit"]}

    def blind_next(self, rater: str) -> dict:
        """The rater's next unrated unit, kind and number hidden; the queue (features and neurons in
        random order) is drawn on first use and kept in the database."""
        with self.lock:
            db = self._db()
            try:
                if not db.execute("SELECT 1 FROM blind_queue WHERE rater = ?", (rater,)).fetchone():
                    rng = random.Random(f"{self.seed}:{rater}")
                    items = []
                    for kind in self.data.kinds:
                        pool = self.data.firing[kind]
                        items += [(kind, u) for u in rng.sample(pool, min(self.blind_per_kind, len(pool)))]
                    rng.shuffle(items)
                    db.executemany(
                        "INSERT INTO blind_queue (rater, position, kind, unit) VALUES (?,?,?,?)",
                        [(rater, i, k, u) for i, (k, u) in enumerate(items)],
                    )
                    db.commit()
                total = db.execute("SELECT COUNT(*) FROM blind_queue WHERE rater = ?", (rater,)).fetchone()[0]
                row = db.execute(
                    "SELECT id, position, kind, unit FROM blind_queue WHERE rater = ? AND rating_id IS NULL"
                    " ORDER BY position LIMIT 1",
                    (rater,),
                ).fetchone()
            finally:
                db.close()
        if row is None:
            return {"done": True, "total": total}
        page = {k: v for k, v in self.data.page(row[2], row[3]).items() if k not in ("unit", "interp", "steering")}
        return {"item": row[0], "position": row[1], "total": total, "page": page}

    def steer(self, body: dict) -> dict:
        if self.steerer is None:
            raise rubric.RatingError("this server has no model loaded for sampling; start it with evaluate.py stage=serve")
        kind, unit = body.get("kind"), body.get("unit")
        if kind not in self.data.n_units:
            raise rubric.RatingError(f"kind={kind!r}: choose one of {self.data.kinds}")
        if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < self.data.n_units[kind]:
            raise rubric.RatingError(f"unit={unit!r}: {kind} are numbered 0..{self.data.n_units[kind] - 1}")
        multiple = body.get("multiple", 5.0)
        if not isinstance(multiple, (int, float)) or isinstance(multiple, bool) or not 0 <= multiple <= MAX_MULTIPLE:
            raise rubric.RatingError(f"multiple={multiple!r}: a number in 0..{MAX_MULTIPLE}")
        prompt = body.get("prompt", "The")
        if not isinstance(prompt, str) or not prompt or len(prompt) > MAX_PROMPT:
            raise rubric.RatingError(f"prompt must be 1..{MAX_PROMPT} characters")
        with self.lock:  # one model, one sampling at a time
            return self.steerer(kind, unit, float(multiple), prompt)


def serve(server: DashboardServer) -> None:
    print(f"feature browser at {server.url}  (ratings: {server.db_path}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Serve a written feature-browser site with rating (no sampling model).")
    p.add_argument("site", type=Path)
    p.add_argument("--db", type=Path, required=True, help="the SQLite file for ratings, e.g. <eval dir>/ratings.sqlite")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--blind-per-kind", type=int, default=20)
    a = p.parse_args(argv)
    serve(DashboardServer(a.site, a.db, a.host, a.port, blind_per_kind=a.blind_per_kind))


if __name__ == "__main__":
    main()
