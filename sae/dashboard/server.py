"""The local server of the feature browser: the site's files, ratings into SQLite, blind mode, and
pinned sampling on demand.

    python -m sae.dashboard.server SITE_DIR --db EVAL_DIR/ratings.sqlite [--host 127.0.0.1] [--port 8765]

It binds 127.0.0.1 unless told otherwise and serves only files inside the site folder. Every
rating is validated (the unit exists, four integer scores 0-5, bounded text) and committed to the
database before the answer is sent, so an acknowledged rating survives a crash.

Every request gets an answer, JSON for every error: a malformed one a 4xx naming what is wrong, a
fault of the server (or of sampling) a 500 with its message. Requests are checked before anything
else runs:
- the `Host` header must name the address the server is bound to (with `localhost`, `127.0.0.1`
  and `[::1]` as aliases of a loopback address), so a page on another site that points its own DNS
  name at this machine (DNS rebinding) is refused; a POST's `Origin`, when sent, must be this
  server, and a browser's fetch from another site (`Sec-Fetch-Site`) is refused except to open the
  page itself;
- the whole request must arrive within `request_timeout` seconds; headers, request line and body
  are bounded in size; the JSON body must be one object of bounded nesting;
- a fixed pool of worker threads serves connections (one request each), a bounded number wait, and
  beyond that a connection is answered 503 at once.
Ratings and sampling have separate locks: a rating is saved while a sampling request runs, and one
sampling request runs at a time (another one meanwhile is answered 503).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import queue
import random
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Optional

from sae.dashboard import rubric
from sae.dashboard.guards import (
    MAX_HEADER_BYTES,
    SECURITY_HEADERS,
    DeadlineReader,
    HeaderBudget,
    HostCheck,
    RequestError,
    SocketWriter,
    bracket,
    json_body_length,
    parse_json_object,
    parse_query,
    split_target,
)
from sae.dashboard.site import parse_js_call

MAX_BODY = 16 * 1024
MAX_REQUEST_LINE = 8 * 1024
MAX_PROMPT = 200
MAX_MULTIPLE = 1000.0
REQUEST_TIMEOUT = 5.0  # seconds for a whole request to arrive (and for each write of the answer)
MAX_WORKERS = 8
MAX_WAITING = 32
LINGER_SECONDS, LINGER_BYTES = 1.0, 1 << 20  # what is read, at most, after the answer before closing
ALLOWED_METHODS = "GET, HEAD, POST"

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


# ---------------------------------------------------------------- the handler


class Handler(SimpleHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.0"  # one request per connection: an idle keep-alive never holds a worker
    default_request_version = "HTTP/1.0"  # errors before the request line is parsed still get headers

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.server.request_timeout)
        self.reader = DeadlineReader(self.connection, self.server.request_timeout)
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = SocketWriter(self.connection)

    # ------------------------------------------------------------ one request
    def handle_one_request(self) -> None:
        self.close_connection = True
        self.reader.start()
        self.answered = False
        self.command, self.request_version, self.requestline = "", self.default_request_version, ""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                raise RequestError(414, f"the request line is longer than {MAX_REQUEST_LINE} bytes")
            if len(self.raw_requestline.split()) == 2:  # no version: HTTP/0.9, which has no headers
                raise RequestError(400, "HTTP/0.9 requests are not served: send HTTP/1.0 or 1.1")
            rfile, self.rfile = self.rfile, HeaderBudget(self.rfile, MAX_HEADER_BYTES)
            try:
                parsed = self.parse_request()  # answers malformed request lines and headers itself
            finally:
                self.rfile = rfile
            if parsed:
                self.dispatch()
            self.wfile.flush()
        except RequestError as exc:
            self.fail(exc.status, exc.message, exc.headers)
        except rubric.RatingError as exc:
            self.fail(400, str(exc))
        except TimeoutError:
            self.fail(408, f"the request did not arrive within {self.server.request_timeout:g} s")
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away: there is no one to answer
        except Exception as exc:  # a fault of the server: report it, keep serving
            print(f"[dashboard server] {self.command} {self.path if hasattr(self, 'path') else ''}:", file=sys.stderr)
            traceback.print_exc()
            self.fail(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")

    def fail(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        """Answer an error unless an answer already started (then the connection just closes)."""
        if self.answered:
            return
        with contextlib.suppress(OSError):
            self.answer(status, {"error": message}, headers)

    def send_response(self, code, message=None):
        self.answered = True
        super().send_response(code, message)

    def send_error(self, code, message=None, explain=None):
        """Every error as JSON (the standard handler's own ones too: bad request line, long headers)."""
        text = message or HTTPStatus(code).phrase
        if explain and explain != text:
            text = f"{text}: {explain}"
        self.answer(int(code), {"error": text})

    def end_headers(self):
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        super().end_headers()

    def answer(self, status: int, payload: dict, headers: Optional[dict] = None) -> None:
        body = json.dumps(payload).encode()  # before the status line: a value JSON cannot hold is a 500
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def dispatch(self) -> None:
        if self.command not in ("GET", "HEAD", "POST"):
            allow = {"Allow": ALLOWED_METHODS}
            raise RequestError(405, f"method {self.command[:20]!r} is not supported: use {ALLOWED_METHODS}", allow)
        path, query = split_target(self.path)
        self.check_host()
        self.check_fetch_site()
        if self.command == "POST":
            self.check_origin()
            if path not in ("/api/rating", "/api/steer", "/api/blind/start"):
                raise RequestError(404, f"no such endpoint: POST {path[:200]}")
            return self.api_post(path)
        if path.startswith("/api/"):
            if self.command == "HEAD":
                raise RequestError(405, "use GET for the API", {"Allow": "GET, POST"})
            return self.api_get(path, query)
        self.file_path = path
        if self.command == "HEAD":
            return super().do_HEAD()
        return super().do_GET()

    # ------------------------------------------------------------ who may ask
    def check_host(self) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            raise RequestError(400, "send exactly one Host header")
        if not self.server.hosts.allows(hosts[0]):
            raise RequestError(
                403,
                f"Host {hosts[0][:100]!r} is not this server's address: it answers requests for "
                f"{self.server.hosts.describe()} (a page that reaches it through another name is refused)",
            )

    def check_origin(self) -> None:
        origins = self.headers.get_all("Origin") or []
        if not origins:
            return
        expected = "http://" + self.headers["Host"].strip().lower()
        if len(origins) != 1 or origins[0].strip().lower() != expected:
            raise RequestError(
                403, f"Origin {origins[0][:100]!r} is not this server ({expected}): writes come from its page only"
            )

    def check_fetch_site(self) -> None:
        """A browser's request from another site (or another port: 'same-site') may open the page,
        not fetch its data or post to it."""
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        navigating = self.command == "GET" and (self.headers.get("Sec-Fetch-Mode") or "").strip().lower() == "navigate"
        if site in ("cross-site", "same-site") and not navigating:
            raise RequestError(403, f"a request from another site (Sec-Fetch-Site: {site}) may only open the page")

    # ------------------------------------------------------------ files
    def translate_path(self, path: str) -> str:
        """Only files inside the site folder: the root is index.html; anything that resolves outside
        the folder, or to a folder inside it, maps to a missing file (no listings, no redirects)."""
        root = self.server.site
        missing = str(root / "__missing__")
        target = (root / getattr(self, "file_path", "/").lstrip("/")).resolve()
        if target == root:
            return str(root / "index.html")
        if root not in target.parents or target.is_dir():
            return missing
        return str(target)

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    # ------------------------------------------------------------ JSON API
    def read_json(self) -> dict:
        length = json_body_length(self.headers, MAX_BODY)
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise RequestError(400, f"the body ended after {len(raw)} of its {length} bytes")
        return parse_json_object(raw)

    def api_get(self, path: str, query: str) -> None:
        s = self.server
        if path == "/api/health":
            parse_query(query, ())
            return self.answer(200, {"ok": True, "kinds": s.data.kinds, "steering": s.steerer is not None})
        if path == "/api/ratings":
            parse_query(query, ())
            return self.answer(200, rubric.unit_means(s.db_path, s.data.sae_id))
        if path == "/api/blind/next":
            rater = rubric.check_rater(parse_query(query, ("rater",)).get("rater"))
            return self.answer(200, s.blind_next(rater))
        raise RequestError(404, f"no such endpoint: GET {path[:200]}")

    def api_post(self, path: str) -> None:
        body = self.read_json()
        s = self.server
        if path == "/api/rating":
            return self.answer(201, s.save_rating(body))
        if path == "/api/blind/start":
            return self.answer(200, s.blind_start(rubric.check_rater(body.get("rater"))))
        return self.answer(200, s.steer(body))


# ---------------------------------------------------------------- the server


class DashboardServer(HTTPServer):
    """The rating server: a fixed pool of `max_workers` threads, `max_waiting` connections queued
    beyond them, 503 for the rest; one lock for the ratings, another for the model."""

    request_queue_size = 64  # the listen backlog

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
        allowed_hosts: tuple[str, ...] = (),
        max_workers: int = MAX_WORKERS,
        max_waiting: int = MAX_WAITING,
        request_timeout: float = REQUEST_TIMEOUT,
    ):
        self.site = Path(site).resolve()
        if not (self.site / "index.html").is_file():
            raise FileNotFoundError(f"{self.site} has no index.html: write the site first (evaluate.py stage=dashboard).")
        if max_workers < 1 or max_waiting < 0 or request_timeout <= 0:
            raise ValueError("max_workers must be >= 1, max_waiting >= 0 and request_timeout > 0")
        self.data = SiteData(self.site)
        self.db_path = Path(db_path)
        self.steerer, self.blind_per_kind, self.seed, self.verbose = steerer, blind_per_kind, seed, verbose
        self.request_timeout = float(request_timeout)
        self.ratings_lock = threading.Lock()  # database writes (SQLite's own busy timeout covers other processes)
        self.model_lock = threading.Lock()  # one sampling at a time; ratings never wait for it
        rubric.connect(self.db_path).close()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.hosts = HostCheck(host, self.server_address[1], tuple(allowed_hosts))
        self.max_workers, self.max_waiting = max_workers, max_waiting
        self.slots = threading.BoundedSemaphore(max_workers + max_waiting)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = [threading.Thread(target=self._work, name=f"dashboard-{i}", daemon=True) for i in range(max_workers)]
        for w in self.workers:
            w.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{bracket(host)}:{port}/"

    # ------------------------------------------------------------ the pool
    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            return self.refuse(request)
        self.jobs.put((request, client_address))

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            request, client_address = job
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                linger(request)
                self.shutdown_request(request)
                self.slots.release()

    def refuse(self, request) -> None:
        """503 from the accepting thread, spending at most a moment on the connection: the request is
        read (so closing does not reset the connection before the answer is read), not served."""
        busy = f"the server is busy ({self.max_workers} requests in progress, {self.max_waiting} waiting): retry in a moment"
        body = json.dumps({"error": busy}).encode()
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            got, end = b"", time.monotonic() + 0.2
            request.settimeout(0.05)
            while b"\r\n\r\n" not in got and len(got) < MAX_HEADER_BYTES and time.monotonic() < end:
                try:
                    chunk = request.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                got += chunk
            request.settimeout(0.2)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self.workers:
            self.jobs.put(None)

    # ------------------------------------------------------------ ratings
    def _db(self) -> sqlite3.Connection:
        return rubric.connect(self.db_path)

    def save_rating(self, body: dict) -> dict:
        blind_item = body.get("blind_item")
        with self.ratings_lock:
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

    def blind_start(self, rater: str) -> dict:
        """Draw the rater's blind queue (features and neurons in random order) unless it exists, and
        return its next unrated unit."""
        with self.ratings_lock:
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
            finally:
                db.close()
        return self.blind_next(rater)

    def blind_next(self, rater: str) -> dict:
        """The rater's next unrated unit, kind and number hidden (reads only: POST /api/blind/start
        draws the queue)."""
        db = self._db()
        try:
            total = db.execute("SELECT COUNT(*) FROM blind_queue WHERE rater = ?", (rater,)).fetchone()[0]
            row = db.execute(
                "SELECT id, position, kind, unit FROM blind_queue WHERE rater = ? AND rating_id IS NULL"
                " ORDER BY position LIMIT 1",
                (rater,),
            ).fetchone()
        finally:
            db.close()
        if not total:
            raise RequestError(404, f"rater {rater!r} has no blind queue: start one with POST /api/blind/start")
        if row is None:
            return {"done": True, "total": total}
        page = {k: v for k, v in self.data.page(row[2], row[3]).items() if k not in ("unit", "interp", "steering")}
        return {"item": row[0], "position": row[1], "total": total, "page": page}

    # ------------------------------------------------------------ sampling
    def steer(self, body: dict) -> dict:
        if self.steerer is None:
            raise rubric.RatingError("this server has no model loaded for sampling; start it with evaluate.py stage=serve")
        kind, unit = body.get("kind"), body.get("unit")
        if not isinstance(kind, str) or kind not in self.data.n_units:
            raise rubric.RatingError(f"kind={rubric.shorten(kind)}: choose one of {self.data.kinds}")
        if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < self.data.n_units[kind]:
            raise rubric.RatingError(f"unit={rubric.shorten(unit)}: {kind} are numbered 0..{self.data.n_units[kind] - 1}")
        multiple = body.get("multiple", 5.0)
        if not isinstance(multiple, (int, float)) or isinstance(multiple, bool) or not 0 <= multiple <= MAX_MULTIPLE:
            raise rubric.RatingError(f"multiple={rubric.shorten(multiple)}: a number in 0..{MAX_MULTIPLE}")
        prompt = body.get("prompt", "The")
        if not isinstance(prompt, str) or not prompt or len(prompt) > MAX_PROMPT:
            raise rubric.RatingError(f"prompt must be 1..{MAX_PROMPT} characters")
        if not self.model_lock.acquire(blocking=False):
            busy = "the model is busy with another sampling request: retry when it finishes"
            raise RequestError(503, busy, {"Retry-After": "5"})
        try:
            return self.steerer(kind, unit, float(multiple), prompt)
        except Exception as exc:
            print(f"[dashboard server] sampling {kind} {unit} failed:", file=sys.stderr)
            traceback.print_exc()
            raise RequestError(500, f"sampling failed: {type(exc).__name__}: {str(exc)[:300]}") from None
        finally:
            self.model_lock.release()


def linger(request: socket.socket) -> None:
    """Half-close, then read what the client still sends (briefly, and boundedly) before closing:
    closing a socket with unread bytes resets the connection, and the reset can destroy the answer
    before the client reads it (a 413 sent without reading the large body)."""
    try:
        request.shutdown(socket.SHUT_WR)
        end, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        while left > 0 and (wait := end - time.monotonic()) > 0:
            request.settimeout(wait)
            chunk = request.recv(min(65536, left))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass


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
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name clients use for this server (e.g. the machine's DNS name behind an SSH tunnel); repeatable",
    )
    a = p.parse_args(argv)
    serve(DashboardServer(a.site, a.db, a.host, a.port, blind_per_kind=a.blind_per_kind, allowed_hosts=tuple(a.allow_host)))


if __name__ == "__main__":
    main()
