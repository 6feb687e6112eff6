"""Logit weights, ablation and pinned sampling on the real embedded model with a hand-built SAE whose
answers are known (tests/test_dashboard_support.py), and `evaluate.py stage=dashboard` end to end."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from support.dashboard import HOOK, LAYER, known_sae, model_config, save_known_sae
from support.runs import run_script

from sae.dashboard.ablation import ablation_effect, spliced_logprobs
from sae.dashboard.logits import final_norm_scale, logit_weights, unembedding
from sae.dashboard.steering import next_token_logprobs, pinned_samples, prompt_ids
from sae.dashboard.units import UnitSpace
from sae.text.sources import DataConfig

HOOK_NAME = f"blocks.{LAYER}.{HOOK}"
TEXT = "The old city walls were rebuilt after the war, and the city grew along the river."


@pytest.fixture(scope="module")
def model():
    from sae.lm.bridge import bos_token_id, load_language_model

    bridge = load_language_model(model_config())
    sae, feature, token = known_sae(bridge)
    return bridge, bos_token_id(bridge), UnitSpace("features", sae), feature, token


def test_logit_weights_promote_the_token_of_the_decoder_direction(model):
    bridge, _, space, feature, token = model
    w_u, gamma = unembedding(bridge), final_norm_scale(bridge)
    own, control = logit_weights(space.directions([feature, feature + 1], w_u.shape[0]), w_u, gamma, 10)
    assert own["promoted"][0][0] == token
    assert token not in [t for t, _ in control["promoted"]]
    assert own["promoted"][0][1] > own["promoted"][1][1] > 0 > own["suppressed"][0][1]
    # an identity feature's direction is the basis vector: its logit weights are γ_i · W_U[i, :]
    (basis,) = logit_weights(space.directions([3], w_u.shape[0]), w_u, gamma, 5)
    assert basis["promoted"][0][1] == pytest.approx(float((gamma[3] * w_u[3]).max()), rel=1e-4)


def test_ablating_the_feature_lowers_the_tokens_log_prob_where_it_fires(model):
    bridge, bos, space, feature, token = model
    ids = torch.tensor([[bos, *bridge.tokenizer.encode(TEXT, add_special_tokens=False)]])
    fires = torch.ones_like(ids, dtype=torch.bool)
    fires[:, 0] = False  # BOS keeps its clean activation
    effect = ablation_effect(bridge, HOOK_NAME, space, feature, ids, fires, bos, k=5)
    # through the final norm (and the softmax) the ranking is not exactly the logit weights', but close
    assert token in [t for t, _ in effect["promoted"][:3]]
    assert effect["positions"] == ids.shape[1] - 2
    logp = spliced_logprobs(bridge, HOOK_NAME, space, ids, [(None, None), (feature, 0.0)], bos)
    with_it, without = logp[0, 0, 1:-1, token], logp[1, 0, 1:-1, token]
    assert bool((with_it > without).all())  # at every position where it fires
    control = ablation_effect(bridge, HOOK_NAME, space, feature + 1, ids, fires, bos, k=5)
    assert token not in [t for t, _ in control["promoted"]]


def test_clamping_the_feature_raises_the_tokens_probability(model):
    bridge, bos, space, feature, token = model
    base, pinned = next_token_logprobs(bridge, HOOK_NAME, space, feature, 5.0, prompt_ids(bridge, "The", bos), bos)
    assert pinned[0, token].exp() > 10 * base[0, token].exp()
    samples = pinned_samples(bridge, HOOK_NAME, space, feature, 5.0, ["The"], 2, 1.0, 0, bos, k=3)
    assert samples[0]["first_step_raised"][0][1] > 0 and samples[0]["pinned"] != samples[0]["unclamped"]
    # clamped at its own activation (1: this feature is always on) nothing changes: same prompt,
    # same seed, same uniform draws -> the same continuation
    same = pinned_samples(bridge, HOOK_NAME, space, feature, 1.0, ["The"], 2, 1.0, 0, bos)
    assert same[0]["pinned"] == same[0]["unclamped"] == samples[0]["unclamped"]


@pytest.mark.slow
def test_evaluate_stage_dashboard_and_rubric_report(model, tmp_path):
    bridge, _, _, _, _ = model
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=64)
    sae_dir, feature, token = save_known_sae(bridge, tmp_path / "run" / "sae", data)
    common = [f"sae_path={sae_dir}"]  # its training config logs to CSV
    proc = run_script(
        "evaluate.py",
        [
            *common,
            "stage=dashboard",
            "dashboard.n_contexts=4",
            "dashboard.window=16",
            "dashboard.batch_size=4",
            "dashboard.ablation_units=1",
            "dashboard.steering_units=1",
            "dashboard.steering_tokens=2",
            "dashboard.steering_prompts=[The]",
            "dashboard.part_units=600",
        ],
        timeout=900,
    )
    assert "open it: file://" in proc.stdout
    eval_dir = tmp_path / "run" / "eval"
    site = eval_dir / "dashboard" / "site"
    from sae.dashboard.site import parse_js_call

    features = parse_js_call((site / "data" / "features" / "index.js").read_text())[1]
    neurons = parse_js_call((site / "data" / "neurons" / "index.js").read_text())[1]
    assert (features["n_units"], neurons["n_units"]) == (2 * 576 + 2, 576)
    assert features["density"][feature] == 1.0  # always on (BOS excluded)
    chunk = parse_js_call((site / "data" / "features" / "chunk_0001.js").read_text())[2]
    page = chunk[feature - 600]
    assert page["unit"] == feature and page["logits"]["promoted"][0][0] == token
    assert all(a == 1.0 for r in page["records"] for a in r["acts"])
    store = next(p for p in (eval_dir / "dashboard").iterdir() if p.name != "site")
    for kind in ("features", "neurons"):
        ablated = {u: e for f in (store / kind).glob("ablation_*.json") for u, e in json.loads(f.read_text()).items()}
        assert len(ablated) == 1 and next(iter(ablated.values()))["positions"] > 0
        steering = json.loads((store / kind / "steering.json").read_text())
        assert len(steering) == 1 and len(next(iter(steering.values()))["samples"]) == 1
    assert (site / "index.html").exists() and (site / "app.js").exists()

    # stage=serve's server: pinned sampling on demand through the real endpoint (this test's model)
    import http.client
    import threading

    from sae.dashboard.config import DashboardConfig
    from sae.dashboard.server import DashboardServer
    from sae.dashboard.stages import Session, steerer

    cfg = DashboardConfig(steering_tokens=2)
    from sae.formats.run_config import run_configs

    session = Session(sae_dir, eval_dir, run_configs(json.loads((sae_dir / "cfg.json").read_text())), cfg)
    session.bridge = lambda: bridge
    srv = DashboardServer(session.site, session.db, "127.0.0.1", 0, steerer=steerer(session, cfg))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=300)
        conn.request(
            "POST",
            "/api/steer",
            json.dumps({"kind": "features", "unit": feature, "multiple": 5, "prompt": "The"}),
            {"Content-Type": "application/json"},
        )
        res = conn.getresponse()
        steered = json.loads(res.read())
        assert res.status == 200 and steered["value"] == pytest.approx(5.0)
        assert steered["samples"][0]["prompt"] == "The" and steered["samples"][0]["pinned"]
    finally:
        srv.shutdown()
        srv.server_close()

    from sae.dashboard import rubric

    db = rubric.connect(eval_dir / "ratings.sqlite")
    from sae.formats.native import weights_digest

    for kind, unit, score in (("features", feature, 5), ("features", 3, 3), ("neurons", 3, 1), ("neurons", 4, 2)):
        rubric.insert(
            db,
            rubric.validate(
                {"rater": "t", "kind": kind, "unit": unit, "scores": dict.fromkeys(rubric.CRITERIA, score)},
                {"features": 1154, "neurons": 576},
            ),
            weights_digest(sae_dir),
        )
    db.commit()
    db.close()
    run_script("evaluate.py", [*common, "stage=rubric_report"], timeout=600)
    report = json.loads((eval_dir / "rubric" / "rubric_report.json").read_text())
    assert report["features"]["overall"]["mean"] == 4.0 and report["neurons"]["overall"]["mean"] == 1.5
    assert sqlite3.connect(eval_dir / "ratings.sqlite").execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 4
