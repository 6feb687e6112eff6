"""Hostile input to the rating server on a real socket (127.0.0.1, an ephemeral port): every malformed
request gets a JSON answer with a 4xx (5xx for a fault of the server), never a dropped connection; slow
clients are cut off; a full worker pool answers 503; requests addressed to another host, or writes
from another origin, are refused."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import threading
import time

import pytest
from support.dashboard import write_synthetic_site

TIMEOUT = 1.5  # the servers' request timeout here: slow-client tests wait about this long


class Steerer:
    """Sampling stand-in: by prompt it fails, returns what JSON cannot hold, or answers."""

    def __call__(self, kind, unit, multiple, prompt):
        if prompt == "boom":
            raise RuntimeError("CUDA out of memory (simulated)")
        if prompt == "unserialisable":
            return {"samples": object()}
        return {"multiple": multiple, "value": 1.0, "samples": [{"prompt": prompt, "unclamped": "a", "pinned": "b"}]}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    site_dir, indices, cfg, _ = write_synthetic_site(root, n_features=64, d=16, n_contexts=30, part_units=32)
    return root, site_dir


def start(root, site_dir, **settings):
    from sae.dashboard.server import DashboardServer

    srv = DashboardServer(site_dir, root / "ratings.sqlite", "127.0.0.1", 0, **settings)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def served(site):
    root, site_dir = site
    srv = start(root, site_dir, steerer=Steerer(), request_timeout=TIMEOUT, max_workers=4, max_waiting=8)
    yield srv, root
    stop(srv)


def host_of(srv) -> str:
    host, port = srv.server_address[:2]
    return f"{host}:{port}"


def exchange(srv, data: bytes, timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send raw bytes, read the answer (http.client raises RemoteDisconnected if there is none)."""
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        res = http.client.HTTPResponse(sock)
        res.begin()
        return res.status, res.headers, res.read()


def error(status_headers_body, status: int) -> str:
    """The JSON error message of an answer that must have `status`."""
    got, headers, body = status_headers_body
    assert got == status, (got, body[:300])
    assert headers["Content-Type"] == "application/json"
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


def get(srv, target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host_of(srv)}\r\n{extra}\r\n".encode()


def post(srv, path: str, body: bytes, extra: str = "", content_type: str = "application/json") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host_of(srv)}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def rating(**over) -> dict:
    return {
        "rater": "ana",
        "kind": "features",
        "unit": 5,
        "scores": {"confidence": 4, "activations": 3, "logits": 0, "specificity": 5},
        **over,
    }


def n_ratings(root) -> int:
    db = sqlite3.connect(root / "ratings.sqlite")
    try:
        return db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    finally:
        db.close()


# ---------------------------------------------------------------- malformed targets and queries


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("/data/%00", "control character"),
        ("/data/features/index.js%00.png", "control character"),
        ("/data/%0a", "control character"),
        ("/%ff%fe", "not UTF-8"),
        ("/data/%zz", "two hex digits"),
        ("/data/\x01x", "not allowed in a URL"),
        ("/caf\xe9", "not allowed in a URL"),
        ("/api/blind/next?rater=%ff", "query string"),
        ("/api/blind/next?rater", "query string"),
        ("/api/health?a=1&&b=2", "query string"),
        ("/api/blind/next?rater=a&rater=b", "rater once"),
        ("/api/health?debug=1", "unknown query parameter"),
        ("/api/blind/next?rater=%00", "rater"),
    ],
)
def test_bad_paths_and_queries_get_400(served, target, fragment):
    srv, _ = served
    data = f"GET {target} HTTP/1.1\r\nHost: {host_of(srv)}\r\n\r\n".encode("latin-1")
    assert fragment in error(exchange(srv, data), 400)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"])
def test_unknown_methods_get_405_with_allow(served, method):
    srv, _ = served
    answer = exchange(srv, f"{method} /api/rating HTTP/1.1\r\nHost: {host_of(srv)}\r\nContent-Length: 0\r\n\r\n".encode())
    assert method in error(answer, 405)
    assert answer[1]["Allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize(
    "data, status, fragment",
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"GET /\r\n\r\n", 400, "HTTP/0.9"),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505, "HTTP version"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request line"),
    ],
)
def test_malformed_request_lines_get_json_errors(served, data, status, fragment):
    srv, _ = served
    assert fragment in error(exchange(srv, data), status)


def test_oversized_headers_get_431(served):
    srv, _ = served
    one_long = get(srv, "/api/health", "X-Long: " + "a" * 70000 + "\r\n")
    many = get(srv, "/api/health", "".join(f"X-H{i}: {'b' * 1000}\r\n" for i in range(40)))  # 40 KB in all
    too_many = get(srv, "/api/health", "".join(f"X-N{i}: c\r\n" for i in range(120)))
    for data in (one_long, many, too_many):
        error(exchange(srv, data), 431)
    assert exchange(srv, get(srv, "/api/health", "Cookie: " + "d" * 4000 + "\r\n"))[0] == 200


# ---------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize("body", [b"[1, 2]", b"42", b'"text"', b"null", b"true", b"[]"])
@pytest.mark.parametrize("path", ["/api/steer", "/api/rating", "/api/blind/start"])
def test_json_that_is_not_an_object_gets_400(served, path, body):
    srv, root = served
    before = n_ratings(root)
    assert "JSON object" in error(exchange(srv, post(srv, path, body)), 400)
    assert n_ratings(root) == before


BAD_JSON = [
    (b"[" * 8000 + b"]" * 8000, "nested deeper"),
    (b'{"rater": ' + b'{"a": ' * 20 + b"1" + b"}" * 21, "nested deeper"),
    (b'{"rater": "' + "ana".encode("utf-16") + b'"}', "not UTF-8"),
    (b'{"rater": "\xff\xfe"}', "not UTF-8"),
    (b'{"rater": "a", "unit": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"kind": "features", "unit": 1, "multiple": NaN}', "not valid JSON"),
    (b'{"kind": "features", "unit": 1, "multiple": -Infinity}', "not valid JSON"),
    (b'{"rater": "an', "not valid JSON"),
    (json.dumps(rating(rater="\ud800")).encode(), "lone surrogate"),
    (json.dumps({"kind": "features", "unit": 1, "prompt": "ok \udfff"}).encode(), "lone surrogate"),
]


@pytest.mark.parametrize("body, fragment", BAD_JSON)
@pytest.mark.parametrize("path", ["/api/steer", "/api/rating", "/api/blind/start"])
def test_bad_json_bodies_get_400_and_store_nothing(served, path, body, fragment):
    srv, root = served
    before = n_ratings(root)
    assert fragment in error(exchange(srv, post(srv, path, body)), 400)
    assert n_ratings(root) == before


@pytest.mark.parametrize(
    "body, fragment",
    [
        (rating(note="ok \udfff"), "lone surrogate"),
        (rating(kind=[]), "kind=[]"),
        (rating(kind={"a": 1}), "kind={'a': 1}"),
        (rating(unit=[5]), "unit=[5]"),
        (rating(unit=10**30), "unit=1000000"),
        (rating(scores=[1, 2, 3, 4]), "scores"),
        (rating(scores={"confidence": [1], "activations": 3, "logits": 0, "specificity": 5}), "scores.confidence=[1]"),
        (rating(note=["x"]), "note"),
        (rating(rater=["ana"]), "rater"),
        (rating(blind_item="1"), "blind_item"),
        (rating(blind_item=[1]), "blind_item"),
    ],
)
def test_bad_rating_fields_get_400(served, body, fragment):
    srv, root = served
    before = n_ratings(root)
    assert fragment in error(exchange(srv, post(srv, "/api/rating", json.dumps(body).encode())), 400)
    assert n_ratings(root) == before


def test_bad_steer_fields_get_400(served):
    srv, _ = served
    for body, fragment in (
        ({"kind": [], "unit": 1}, "kind=[]"),
        ({"kind": "features", "unit": [1]}, "unit=[1]"),
        ({"kind": "features", "unit": 1, "multiple": "5"}, "multiple="),
        ({"kind": "features", "unit": 1, "prompt": ["a"]}, "prompt"),
    ):
        assert fragment in error(exchange(srv, post(srv, "/api/steer", json.dumps(body).encode())), 400)


@pytest.mark.parametrize(
    "extra, content_type, status, fragment",
    [
        ("", "text/plain", 415, "application/json"),
        ("", "application/json; charset=latin-1", 415, "UTF-8"),
        ("Content-Length: 5\r\n", "application/json", 411, "Content-Length"),  # a second one
        ("Transfer-Encoding: chunked\r\n", "application/json", 411, "Transfer-Encoding"),
    ],
)
def test_bad_body_headers_get_4xx(served, extra, content_type, status, fragment):
    srv, _ = served
    body = json.dumps(rating()).encode()
    assert fragment in error(exchange(srv, post(srv, "/api/rating", body, extra, content_type)), status)


@pytest.mark.parametrize("length, status", [("abc", 411), ("+5", 411), ("1_0", 411), ("0", 413), ("1000000000", 413)])
def test_bad_content_lengths(served, length, status):
    srv, _ = served
    head = (
        f"POST /api/rating HTTP/1.1\r\nHost: {host_of(srv)}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    error(exchange(srv, head.encode() + b"{}"), status)


def test_a_large_body_gets_its_413_not_a_reset(served):
    srv, root = served
    before = n_ratings(root)
    body = json.dumps(rating(note="n" * 200_000)).encode()
    for _ in range(3):
        assert "bytes" in error(exchange(srv, post(srv, "/api/rating", body)), 413)
    assert n_ratings(root) == before


def test_a_body_cut_short_gets_400(served):
    srv, _ = served
    head = f"POST /api/rating HTTP/1.1\r\nHost: {host_of(srv)}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection(srv.server_address[:2], timeout=10) as sock:
        sock.sendall(head.encode() + b'{"rater":')
        sock.shutdown(socket.SHUT_WR)  # the client is done sending: the body ends early
        res = http.client.HTTPResponse(sock)
        res.begin()
        answer = res.status, res.headers, res.read()
    assert "ended after 9 of its 100 bytes" in error(answer, 400)


# ---------------------------------------------------------------- faults of sampling


def test_steerer_exceptions_become_500_and_the_server_keeps_serving(served):
    srv, root = served
    boom = {"kind": "features", "unit": 1, "prompt": "boom"}
    message = error(exchange(srv, post(srv, "/api/steer", json.dumps(boom).encode())), 500)
    assert "sampling failed" in message and "CUDA out of memory (simulated)" in message
    bad = {"kind": "features", "unit": 1, "prompt": "unserialisable"}
    assert "internal error: TypeError" in error(exchange(srv, post(srv, "/api/steer", json.dumps(bad).encode())), 500)
    ok = exchange(srv, post(srv, "/api/steer", json.dumps({"kind": "features", "unit": 1, "prompt": "The"}).encode()))
    assert ok[0] == 200 and json.loads(ok[2])["samples"][0]["prompt"] == "The"
    before = n_ratings(root)
    assert exchange(srv, post(srv, "/api/rating", json.dumps(rating(rater="after-faults")).encode()))[0] == 201
    assert n_ratings(root) == before + 1


# ---------------------------------------------------------------- slow clients and a full pool


def test_a_partial_body_is_cut_off_with_408(served):
    srv, _ = served
    head = f"POST /api/rating HTTP/1.1\r\nHost: {host_of(srv)}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    t0 = time.monotonic()
    assert "did not arrive" in error(exchange(srv, head.encode() + b'{"rater":', timeout=TIMEOUT + 8), 408)
    assert TIMEOUT - 0.1 <= time.monotonic() - t0 < TIMEOUT + 3


def test_a_silent_client_is_cut_off_with_408(served):
    srv, _ = served
    t0 = time.monotonic()
    error(exchange(srv, b"", timeout=TIMEOUT + 8), 408)
    assert time.monotonic() - t0 < TIMEOUT + 3


def test_a_trickling_client_is_cut_off_at_the_deadline(served):
    """One header byte every 0.2 s keeps each read short; the whole request still has a deadline."""
    srv, _ = served
    with socket.create_connection(srv.server_address[:2], timeout=TIMEOUT + 8) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host_of(srv)}\r\nX-Slow: ".encode())
        stop_at = time.monotonic() + TIMEOUT + 8

        def trickle():
            try:
                while time.monotonic() < stop_at:
                    sock.send(b"a")
                    time.sleep(0.2)
            except OSError:
                pass  # cut off

        t0 = time.monotonic()
        threading.Thread(target=trickle, daemon=True).start()
        try:
            res = http.client.HTTPResponse(sock)
            res.begin()
            status = res.status
        except ConnectionResetError:
            status = "reset"
        elapsed = time.monotonic() - t0
    assert status in (408, "reset") and elapsed < TIMEOUT + 3
    assert exchange(srv, get(srv, "/api/health"))[0] == 200


def test_a_full_pool_answers_503_and_recovers(site):
    root, site_dir = site
    srv = start(root, site_dir, request_timeout=2.0, max_workers=2, max_waiting=0)
    held = []
    try:
        for _ in range(2):  # two clients that send part of a request hold both workers
            sock = socket.create_connection(srv.server_address[:2], timeout=10)
            sock.sendall(b"GET /api/health HTTP/1.1\r\n")
            held.append(sock)
        time.sleep(0.3)
        answer = exchange(srv, get(srv, "/api/health"))
        assert "busy" in error(answer, 503) and answer[1]["Retry-After"] == "1"
        for sock in held:  # each is cut off at its deadline
            res = http.client.HTTPResponse(sock)
            res.begin()
            assert res.status == 408
            sock.close()
        # the workers are free again once the cut-off clients have gone
        end, status = time.monotonic() + 3, None
        while status != 200 and time.monotonic() < end:
            status = exchange(srv, get(srv, "/api/health"))[0]
        assert status == 200
        # the pool's threads are the only ones serving: no thread per connection
        assert sum(t.name.startswith("dashboard-") for t in threading.enumerate()) >= 2
    finally:
        for sock in held:
            sock.close()
        stop(srv)


def test_many_clients_at_once_get_answers_not_dropped_connections(served):
    srv, _ = served
    statuses = []

    def one():
        try:
            statuses.append(exchange(srv, get(srv, "/api/health"))[0])
        except OSError as exc:
            statuses.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 40 and set(statuses) <= {200, 503} and 200 in statuses
    assert sum(t.name.startswith("dashboard-") for t in threading.enumerate()) <= 4 + 2  # this pool and the 503 test's


# ---------------------------------------------------------------- Host, Origin, fetch metadata


def request(srv, method: str, path: str, body=None, headers=None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    res = conn.getresponse()
    out = res.status, res.headers, res.read()
    conn.close()
    return out


@pytest.mark.parametrize("path", ["/", "/index.html", "/data/vocab.js", "/api/ratings", "/api/health"])
@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "127.0.0.1:{other}", "127.0.0.1", "127.0.0.1:{port}.evil.example", "evil@127.0.0.1:{port}"]
)
def test_requests_for_another_host_are_refused(served, path, host):
    srv, _ = served
    port = srv.server_address[1]
    value = host.format(port=port, other=port + 1)
    assert "is not this server's address" in error(request(srv, "GET", path, headers={"Host": value}), 403)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_loopback_aliases_are_served(served, host):
    srv, _ = served
    got = request(srv, "GET", "/data/vocab.js", headers={"Host": host.format(port=srv.server_address[1])})
    assert got[0] == 200 and got[2].startswith(b"DASH.vocab(")


def test_writes_for_another_host_or_origin_are_refused(served):
    srv, root = served
    port = srv.server_address[1]
    before = n_ratings(root)
    for headers in (
        {"Host": f"evil.example:{port}"},
        {"Origin": "http://evil.example"},
        {"Origin": f"http://evil.example:{port}"},
        {"Origin": "null"},
        {"Origin": f"https://127.0.0.1:{port}"},
        {"Origin": f"http://localhost:{port}"},  # another origin than the page's (Host 127.0.0.1)
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a page on another port of this machine
    ):
        error(request(srv, "POST", "/api/rating", rating(rater="csrf"), headers), 403)
        error(request(srv, "POST", "/api/blind/start", {"rater": "csrf"}, headers), 403)
    assert n_ratings(root) == before
    own = request(srv, "POST", "/api/rating", rating(rater="own-page"), {"Origin": f"http://127.0.0.1:{port}"})
    assert own[0] == 201 and n_ratings(root) == before + 1


def test_another_site_may_open_the_page_but_not_read_its_data(served):
    srv, _ = served
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"}
    error(request(srv, "GET", "/data/vocab.js", headers=cross), 403)
    error(request(srv, "GET", "/api/ratings", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}), 403)
    opened = request(srv, "GET", "/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert opened[0] == 200 and b"SAE feature browser" in opened[2]
    same = request(srv, "GET", "/data/vocab.js", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"})
    assert same[0] == 200
    # and every answer tells the browser so
    assert same[1]["Cross-Origin-Resource-Policy"] == "same-origin" and same[1]["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in opened[1]["Content-Security-Policy"]


def test_extra_allowed_hosts_on_a_real_socket(site):
    root, site_dir = site
    srv = start(root, site_dir, allowed_hosts=("box.lan", "localhost:9000"))
    try:
        port = srv.server_address[1]
        for host, status in (
            (f"box.lan:{port}", 200),
            ("localhost:9000", 200),
            (f"BOX.LAN:{port}", 200),
            ("box.lan:9000", 403),
            (f"other.lan:{port}", 403),
        ):
            assert request(srv, "GET", "/api/health", headers={"Host": host})[0] == status, host
    finally:
        stop(srv)


def test_host_check_of_wildcard_and_named_binds():
    from sae.dashboard.guards import HostCheck

    anywhere = HostCheck("0.0.0.0", 8765)
    assert anywhere.allows("192.168.1.5:8765") and anywhere.allows("localhost:8765") and anywhere.allows("[fe80::1]:8765")
    assert not anywhere.allows("evil.example:8765") and not anywhere.allows("192.168.1.5:8766")
    named = HostCheck("box.lan", 80)
    assert named.allows("box.lan") and named.allows("box.lan:80") and not named.allows("localhost")
    with pytest.raises(ValueError, match="allowed host"):
        HostCheck("127.0.0.1", 1, ("http://x/",))
