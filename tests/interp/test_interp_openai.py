"""The `openai` backend through the real `openai` client against a scripted server on 127.0.0.1.

The scripted server stands in for OpenAI's hosted API (unreachable here) and its failures: 429 then
success, persistent 500s, timeouts, garbage and truncated completions, an unknown model. Each failure
must give a clear reason, mark only that unit failed, and let the rest go on; a rerun asks again
only for what failed; a run killed midway and restarted never asks the same question twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.interp_servers import ScriptedOpenAIServer

from sae.core.errors import ConfigError
from sae.interp.backends import BackendError, check_ready, explainer_config
from sae.interp.backends.openai_backend import OpenAIBackend, OpenAIConfig
from sae.interp.config import InterpConfig
from sae.interp.pipeline import MethodRun
from sae.interp.records import Record, UnitRecords, save_records
from sae.interp.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
INTERP = InterpConfig(n_features=3, n_explain=2, n_score_top=2, n_score_random=2, score_tokens=3)


def unit(u: int) -> UnitRecords:
    words = [" Paris", " is", " a", " city", " in", " France", " near", " the", " sea"]
    words = [f"{w}{u}" for w in words]  # each unit its own text, so its own questions
    rec = lambda k: Record(tokens=words[k : k + 3], acts=[float((u + k + j) % 3) for j in range(3)])  # noqa: E731
    return UnitRecords(
        unit=u,
        max_activation=2.0,
        density=0.2,
        explain=[rec(0), rec(3)],
        top=[rec(1), rec(2)],
        random=[rec(4), rec(5)],
        quantiles=[],
    )


def backend(url: str, **kw) -> OpenAIBackend:
    cfg = {
        "kind": "openai",
        "model": "scripted",
        "base_url": url,
        "api_key_env": None,
        "max_retries": 2,
        "timeout_s": 5,
        "simulator": "auto",
    }
    cfg.update(kw)
    return OpenAIBackend(explainer_config(cfg))


@pytest.fixture()
def server():
    with ScriptedOpenAIServer(slow_seconds=3) as s:
        yield s


def test_explain_and_simulate_with_integer_fallback(server):
    b = backend(server.url("ok"))
    e = b.explain(unit(0))
    assert e.text == "words about places and cities"
    assert e.usage["prompt_tokens"] > 0
    sim = b.simulate(e, unit(0).top)
    # the endpoint has no prompt logprobs (completions 404), so auto falls back to integers, and says so
    assert sim.method == "integers"
    assert sim.predictions == [[len(t.strip()) % 11 for t in r.tokens] for r in unit(0).top]
    assert any(ep == "completions" for _, ep, _ in server.requests)


def test_rate_limit_is_retried_with_backoff(server):
    b = backend(server.url("429once"), simulator="integers")
    assert b.explain(unit(0)).text == "words about places and cities"
    assert server.count("429once") == 2  # one 429, one retry that succeeded


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("500", r"server error \(500\).*after 1 retries"),
        ("slow", r"timed out after 0.5s"),
        ("garbage", r"malformed completion"),
        ("truncated", r"truncated completion"),
        ("nomodel", r"not found \(404\).*model 'scripted'"),
    ],
)
def test_failures_give_a_clear_reason(server, mode, reason):
    b = backend(server.url(mode), max_retries=1, timeout_s=0.5, simulator="integers")
    with pytest.raises(BackendError, match=reason):
        b.explain(unit(0))
    if mode in ("garbage", "truncated"):
        with pytest.raises(BackendError, match=reason):
            b.simulate(backend(server.url("ok")).explain(unit(0)), unit(0).top)
    if mode == "500":
        assert server.count("500") == 2  # first try + one retry


def test_auto_probe_retries_a_transient_error_and_keys_the_method_used(server, tmp_path):
    """The endpoint returns prompt log-probabilities, but the first probe meets a 503: retried, not
    taken as "no log-probabilities"; every stored simulation is keyed by the method used, never "auto"."""
    b = backend(server.url("logprobs503once"), max_retries=0)  # simulator=auto
    store = ResultStore(tmp_path / "results.jsonl")
    rows = MethodRun("openai", b, store, {"sae": "x"}, workers=1, log=lambda m: None).run([unit(0), unit(1)], INTERP)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert {r.own.simulator_method for r in rows} == {r.control.simulator_method for r in rows} == {"logprobs"}
    sims = [row for row in store.rows() if row["key"]["stage"] == "simulate"]
    assert sims and all(row["key"]["simulator"].endswith(":logprobs") and row["method"] == "logprobs" for row in sims)
    assert any(code == 503 for code in server.statuses)  # the transient error did happen
    # the predictions are the server's expected values, token by token
    stored = next(row for row in sims if row["key"]["unit"] == 0 and row["key"]["explanation_of"] == 0)
    assert stored["predictions"]["top"] == [[len(t.strip()) % 11 for t in r.tokens] for r in unit(0).top]


def test_a_record_token_unknown_does_not_shift_predictions(server):
    """The echoed prompt holds " unknown" as a record token and as the placeholder after it."""
    b = backend(server.url("logprobs"), simulator="logprobs")
    rec = Record(tokens=[" the", " unknown", " value", " is"], acts=[0.0, 1.0, 0.0, 0.0])
    sim = b.simulate(b.explain(unit(0)), [rec])
    assert sim.method == "logprobs"
    assert sim.predictions == [[3.0, 7.0, 5.0, 2.0]]  # the server's value per line: len(token) % 11


def test_missing_key_fails_at_start_up(monkeypatch):
    monkeypatch.delenv("SAE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="SAE_TEST_NO_SUCH_KEY"):
        check_ready(OpenAIConfig(model="gpt-4o-mini", api_key_env="SAE_TEST_NO_SUCH_KEY"))
    monkeypatch.setenv("SAE_TEST_NO_SUCH_KEY", "sk-x")
    check_ready(OpenAIConfig(model="gpt-4o-mini", api_key_env="SAE_TEST_NO_SUCH_KEY"))
    check_ready(OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=None))


def test_unreachable_endpoint_and_missing_key(monkeypatch):
    b = backend("http://127.0.0.1:9/v1", max_retries=0, timeout_s=2)
    with pytest.raises(BackendError, match="cannot reach http://127.0.0.1:9/v1"):
        b.explain(unit(0))
    monkeypatch.delenv("SAE_TEST_NO_SUCH_KEY", raising=False)
    b = backend("http://127.0.0.1:9/v1", api_key_env="SAE_TEST_NO_SUCH_KEY")
    with pytest.raises(BackendError, match="SAE_TEST_NO_SUCH_KEY .* is not set"):
        b.explain(unit(0))


def test_api_key_never_reaches_results(server, tmp_path, monkeypatch):
    secret = "sk-test-" + "q" * 24
    monkeypatch.setenv("SAE_TEST_KEY", secret)
    store = ResultStore(tmp_path / "results.jsonl")
    b = backend(server.url("nomodel"), api_key_env="SAE_TEST_KEY", max_retries=0)
    rows = MethodRun("openai", b, store, {"sae": "x"}, workers=2, log=lambda m: None).run([unit(0)], INTERP)
    assert rows[0].status == "failed" and "404" in rows[0].reason
    assert secret not in (tmp_path / "results.jsonl").read_text()


def test_failed_units_are_marked_and_only_they_are_retried(server, tmp_path):
    """Unit 2's questions hit a failing endpoint; the others finish. The rerun asks only for unit 2."""
    store_path = tmp_path / "results.jsonl"
    units = [unit(0), unit(1), unit(2)]

    class Flaky(OpenAIBackend):
        def explain(self, records):  # route one unit's explanation to the failing endpoint
            if records.unit == 2 and self.broken:
                return backend(server.url("500"), max_retries=0).explain(records)
            return super().explain(records)

    cfg = OpenAIConfig(model="scripted", base_url=server.url("ok"), api_key_env=None, simulator="integers", max_retries=0)
    b = Flaky(cfg)
    b.memo = ResultStore(tmp_path / "requests.jsonl")
    b.broken = True
    rows = MethodRun("openai", b, ResultStore(store_path), {"sae": "x"}, workers=3, log=lambda m: None).run(units, INTERP)
    status = {r.unit: r.status for r in rows}
    assert status == {0: "ok", 1: "ok", 2: "failed"}
    assert "server error (500)" in rows[2].reason
    assert "top_and_random" in rows[0].own.splits and "top_and_random" in rows[0].control.splits
    asked_first = len(server.requests)

    b.broken = False
    rows = MethodRun("openai", b, ResultStore(store_path), {"sae": "x"}, workers=3, log=lambda m: None).run(units, INTERP)
    assert all(r.status == "ok" for r in rows)
    new = [body for _, _, body in server.requests[asked_first:]]
    # Asked again: unit 2's explanation, and its 4 records once. Its control uses the same
    # explanation text (the scripted server gives every unit the same one), so those questions
    # are the same and answered from the store; units 0 and 1 ask nothing new.
    assert len(new) == 1 + 4
    assert max(server.answered.values()) == 1


RESUME_SCRIPT = r"""
import json, sys
from sae.interp.backends.openai_backend import OpenAIConfig
from sae.interp.config import InterpConfig
from sae.interp.pipeline import MethodRun
from sae.interp.records import load_records
from sae.interp.store import ResultStore
from sae.interp.backends.openai_backend import OpenAIBackend
url, records_path, store_path = sys.argv[1:4]
interp = InterpConfig(**json.loads(sys.argv[4]))
units, _ = load_records(__import__("pathlib").Path(records_path), {"test": 1})
cfg = OpenAIConfig(model="scripted", base_url=url, api_key_env=None, simulator="integers", max_concurrency=2)
backend = OpenAIBackend(cfg)
backend.memo = ResultStore(store_path + ".requests")
rows = MethodRun("openai", backend, ResultStore(store_path), {"sae": "x"}, 2, print).run(units, interp)
print("DONE", json.dumps([r.status for r in rows]))
"""


def test_killed_run_resumes_without_asking_twice(server, tmp_path):
    records_path, store_path = tmp_path / "records.json", tmp_path / "results.jsonl"
    save_records(records_path, {"test": 1}, [unit(u) for u in range(6)])
    interp = json.dumps({"n_features": 6, "n_explain": 2, "n_score_top": 2, "n_score_random": 2, "score_tokens": 3})
    cmd = [sys.executable, "-c", RESUME_SCRIPT, server.url("ok"), str(records_path), str(store_path), interp]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    server.hang_after = 12  # answer 12 questions, then stall: the run is killed mid-flight
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    memo = Path(f"{store_path}.requests")
    # wait until the run has stored each of the server's 12 answers; its later questions are never answered
    while sum(server.answered.values()) < 12 or not memo.exists() or memo.read_text().count("\n") < 12:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored_before = len([ln for ln in store_path.read_text().splitlines() if ln.strip()])
    assert 0 < stored_before < 6 + 6 * 2  # some, not all, units were finished before the kill

    server.hang_after = None
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'DONE ["ok", "ok", "ok", "ok", "ok", "ok"]' in out.stdout
    # every question the server answered was answered once, across both runs
    assert server.answered and max(server.answered.values()) == 1
