"""The rating server on a real socket (127.0.0.1, an ephemeral port): only the site's files, every
rating validated with a clear 4xx, committed before the answer; blind mode hides the unit and its
queue is drawn by a POST (a GET never writes); ratings never wait for sampling."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import threading

import pytest
from support.dashboard import write_synthetic_site


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sae.dashboard.server import DashboardServer

    root = tmp_path_factory.mktemp("server")
    site, indices, cfg, _ = write_synthetic_site(root, n_features=96, d=16, n_contexts=40, part_units=32)
    (root / "secret.txt").write_text("outside the site")
    os.symlink(root / "secret.txt", site / "link.txt")
    srv = DashboardServer(site, root / "ratings.sqlite", "127.0.0.1", 0, blind_per_kind=2, seed=3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, root, indices
    srv.shutdown()
    srv.server_close()


def request(srv, method: str, path: str, body=None, headers=None, timeout: float = 30):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    return res.status, payload


def rating(**over):
    return {
        "rater": "ana",
        "kind": "features",
        "unit": 5,
        "scores": {"confidence": 4, "activations": 3, "logits": 0, "specificity": 5},
        "note": "fires on digits",
        **over,
    }


def rows(root, where="1=1"):
    db = sqlite3.connect(root / "ratings.sqlite")
    try:
        return db.execute(
            f"SELECT rater, kind, unit, confidence, activations, logits, specificity, note, blind FROM ratings WHERE {where}"
        ).fetchall()
    finally:
        db.close()


def test_binds_localhost_and_serves_only_site_files(served):
    srv, root, _ = served
    assert srv.server_address[0] == "127.0.0.1"
    status, body = request(srv, "GET", "/")
    assert status == 200 and b"SAE feature browser" in body
    assert request(srv, "GET", "/data/features/index.js")[0] == 200
    for path in (
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/data/../../secret.txt",
        "/..%2fsecret.txt",
        "/link.txt",
        "//etc/passwd",
        "/data/",
        "/../ratings.sqlite",
    ):
        status, body = request(srv, "GET", path)
        assert status == 404, path
        assert b"outside the site" not in body


def test_valid_rating_is_committed_before_the_answer(served):
    srv, root, _ = served
    status, body = request(srv, "POST", "/api/rating", rating(rater="committed"))
    assert status == 201
    answer = json.loads(body)
    assert answer["kind"] == "features" and answer["unit"] == 5
    # a separate connection sees the row as soon as the answer arrived
    assert rows(root, "rater='committed'") == [("committed", "features", 5, 4, 3, 0, 5, "fires on digits", 0)]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (rating(unit=96), 400, "unit=96"),
        (rating(unit=-1), 400, "unit=-1"),
        (rating(unit="5"), 400, "unit="),
        (rating(kind="heads"), 400, "kind="),
        (rating(scores={"confidence": 6, "activations": 3, "logits": 0, "specificity": 5}), 400, "scores.confidence=6"),
        (rating(scores={"confidence": 2.5, "activations": 3, "logits": 0, "specificity": 5}), 400, "scores.confidence=2.5"),
        (rating(scores={"confidence": True, "activations": 3, "logits": 0, "specificity": 5}), 400, "scores.confidence=True"),
        (rating(scores={"confidence": 2, "activations": 3, "logits": 0}), 400, "exactly"),
        (rating(rater=""), 400, "rater"),
        (rating(rater="x" * 65), 400, "rater"),
        (rating(note="n" * 2001), 400, "note"),
        (rating(blind_item=999999), 400, "blind_item=999999"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps(rating(note="n" * 20000)).encode(), 413, "bytes"),
    ],
)
def test_bad_ratings_get_a_clear_4xx_and_store_nothing(served, body, status, message):
    srv, root, _ = served
    before = rows(root)
    got, payload = request(srv, "POST", "/api/rating", body)
    assert got == status
    assert message in json.loads(payload)["error"]
    assert rows(root) == before


def test_wrong_content_type_and_unknown_endpoints(served):
    srv, _, _ = served
    assert request(srv, "POST", "/api/rating", b"rater=a", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert request(srv, "POST", "/api/other", rating())[0] == 404
    assert request(srv, "GET", "/api/other")[0] == 404
    status, payload = request(srv, "POST", "/api/steer", {"kind": "features", "unit": 1})
    assert status == 400 and "no model" in json.loads(payload)["error"]


def queue_rows(root, rater):
    db = sqlite3.connect(root / "ratings.sqlite")
    try:
        return db.execute("SELECT kind, unit FROM blind_queue WHERE rater=? ORDER BY position", (rater,)).fetchall()
    finally:
        db.close()


def test_blind_queue_hides_identity_until_saved(served):
    srv, root, indices = served
    # reading the next unit never writes: without a queue it is a 404 that says how to start one
    status, payload = request(srv, "GET", "/api/blind/next?rater=bea")
    assert status == 404 and "POST /api/blind/start" in json.loads(payload)["error"]
    assert queue_rows(root, "bea") == []
    status, payload = request(srv, "POST", "/api/blind/start", {"rater": "bea"})
    first = json.loads(payload)
    assert status == 200 and first["total"] == 4 and first["position"] == 0
    assert "unit" not in first["page"] and "records" in first["page"]
    queue = queue_rows(root, "bea")
    # the same queue on a second request (nothing rated yet), by GET or by starting again
    assert json.loads(request(srv, "GET", "/api/blind/next?rater=bea")[1])["item"] == first["item"]
    assert json.loads(request(srv, "POST", "/api/blind/start", {"rater": "bea"})[1])["item"] == first["item"]
    assert queue_rows(root, "bea") == queue
    assert sorted(k for k, _ in queue) == ["features", "features", "neurons", "neurons"]
    assert all(indices[k]["density"][u] > 0 for k, u in queue)
    # the page served blind is that unit's page
    kind, unit = queue[0]
    assert first["page"]["max_activation"] == pytest.approx(indices[kind]["max_activation"][unit], abs=1e-3)

    body = {
        "rater": "bea",
        "blind_item": first["item"],
        "scores": {"confidence": 1, "activations": 2, "logits": 3, "specificity": 4},
    }
    status, payload = request(srv, "POST", "/api/rating", body)
    assert status == 201 and (json.loads(payload)["kind"], json.loads(payload)["unit"]) == (kind, unit)
    assert rows(root, "rater='bea'") == [("bea", kind, unit, 1, 2, 3, 4, "", 1)]
    # a blind item is rated once, by its own rater
    assert request(srv, "POST", "/api/rating", body)[0] == 400
    second = json.loads(request(srv, "GET", "/api/blind/next?rater=bea")[1])
    assert second["position"] == 1
    status, payload = request(srv, "POST", "/api/rating", {**body, "rater": "eve", "blind_item": second["item"]})
    assert status == 400 and "another rater" in json.loads(payload)["error"]
    assert request(srv, "GET", "/api/blind/next?rater=")[0] == 400
    assert request(srv, "POST", "/api/blind/start", {"rater": " "})[0] == 400


class SlowSteerer:
    """Sampling that takes as long as the test says: it waits for `release`."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, kind, unit, multiple, prompt):
        self.entered.set()
        assert self.release.wait(60)
        return {"multiple": multiple, "value": 2.0, "samples": [{"prompt": prompt, "unclamped": "u", "pinned": "p"}]}


def test_ratings_are_saved_while_a_slow_sampling_request_runs(served):
    from sae.dashboard.server import DashboardServer

    _, root, _ = served
    steerer = SlowSteerer()
    srv = DashboardServer(root / "site", root / "ratings.sqlite", "127.0.0.1", 0, steerer=steerer, blind_per_kind=2)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sampled = []
    sampling = threading.Thread(
        target=lambda: sampled.append(request(srv, "POST", "/api/steer", {"kind": "features", "unit": 3, "prompt": "slow"}))
    )
    try:
        sampling.start()
        assert steerer.entered.wait(30)
        # the model is busy: a rating, a blind queue and the ratings' means answer at once
        status, payload = request(srv, "POST", "/api/rating", rating(rater="while-sampling"), timeout=5)
        assert status == 201 and rows(root, "rater='while-sampling'")[0][:3] == ("while-sampling", "features", 5)
        assert request(srv, "POST", "/api/blind/start", {"rater": "while-sampling"}, timeout=5)[0] == 200
        assert request(srv, "GET", "/api/ratings", timeout=5)[0] == 200
        # a second sampling request is told the model is busy, not queued behind it
        status, payload = request(srv, "POST", "/api/steer", {"kind": "features", "unit": 4}, timeout=5)
        assert status == 503 and "busy" in json.loads(payload)["error"]
        assert sampling.is_alive() and not sampled
    finally:
        steerer.release.set()
        sampling.join(30)
        srv.shutdown()
        srv.server_close()
    status, payload = sampled[0]
    assert status == 200 and json.loads(payload)["samples"][0]["pinned"] == "p"
