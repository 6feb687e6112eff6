"""The feature browser on hooks that are not the residual stream: logit weights are "not available"
where a unit's direction has no direct path to the logits (the MLP's neurons, a hook whose width is not
d_model), and computed where it has one. Tiny constructed SAEs first (no model), then the real
SmolLM2 with an SAE on `mlp.hook_post` (1,536 wide, d_model 576) through `evaluate.py stage=dashboard`."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from support.runs import run_script

from sae.architectures import build_sae
from sae.dashboard.logits import direct_path, logit_weights
from sae.dashboard.stages import unit_logits
from sae.dashboard.units import UnitSpace

D_MODEL, VOCAB = 16, 50


@pytest.mark.parametrize(
    "hook, width, expected",
    [
        ("blocks.3.hook_resid_pre", D_MODEL, True),
        ("blocks.3.hook_resid_mid", D_MODEL, True),
        ("blocks.29.hook_resid_post", D_MODEL, True),
        ("blocks.0.hook_mlp_out", D_MODEL, True),
        ("blocks.12.hook_attn_out", D_MODEL, True),
        ("blocks.3.mlp.hook_post", 4 * D_MODEL, False),
        ("blocks.3.mlp.hook_pre", 4 * D_MODEL, False),
        ("blocks.3.mlp.hook_post", D_MODEL, False),  # an MLP as wide as the residual stream is still not it
        ("blocks.3.ln2.hook_normalized", D_MODEL, False),
        ("blocks.3.ln1.hook_out", D_MODEL, False),
        ("blocks.3.hook_mlp_out", D_MODEL + 1, False),
    ],
)
def test_direct_path_exists_only_into_the_residual_stream(hook, width, expected):
    assert direct_path(hook, width, D_MODEL) is expected


def random_sae(d_in: int, n_features: int = 12):
    torch.manual_seed(0)
    sae = build_sae("relu", d_in, n_features)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, n_features))
        sae.W_dec.copy_(torch.randn(n_features, d_in))
    return sae


def test_an_sae_wider_than_d_model_gets_no_logit_weights_and_no_crash():
    w_u = torch.randn(D_MODEL, VOCAB)
    sae = random_sae(d_in=3 * D_MODEL)
    for kind in ("features", "neurons"):
        space = UnitSpace(kind, sae, 3 * D_MODEL)
        assert space.directions([0, 1], D_MODEL) is None
        # even if the hook's name claimed a direct path, the widths do not allow one
        assert unit_logits(space, w_u, None, 5, direct=True)([0, 1, 2]) == [None, None, None]
        assert unit_logits(space, w_u, None, 5, direct=False)([0]) == [None]


def test_an_sae_on_the_residual_stream_gets_its_decoder_rows_logit_weights():
    w_u, gamma = torch.randn(D_MODEL, VOCAB), torch.rand(D_MODEL) + 0.5
    sae = random_sae(d_in=D_MODEL)
    space = UnitSpace("features", sae, D_MODEL)
    got = unit_logits(space, w_u, gamma, 5, direct=True)([2, 7])
    assert got == logit_weights(sae.W_dec[[2, 7]].detach(), w_u, gamma, 5)
    top = (sae.W_dec[2].detach() * gamma @ w_u).topk(5)
    assert [t for t, _ in got[0]["promoted"]] == top.indices.tolist()
    # the same SAE on a hook with no direct path: nothing, though the widths would allow it
    assert unit_logits(space, w_u, gamma, 5, direct=False)([2, 7]) == [None, None]


@pytest.mark.slow
def test_stage_dashboard_on_mlp_hook_post_of_the_real_model(tmp_path):
    """SmolLM2's MLP neurons (1,536) under an SAE: the site is written, every logit weight is None, and
    the summary says the hook has no direct path (the page shows "not available")."""
    from sae.dashboard.site import parse_js_call
    from sae.formats.native import save_sae
    from sae.lm.config import ModelConfig
    from sae.text.sources import DataConfig

    layer, hook, d_mlp = 29, "mlp.hook_post", 1536
    model = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=layer, hook=hook)
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=64)
    sae = build_sae("relu", d_mlp, 48)
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_mlp, 48) / d_mlp**0.5)
        sae.b_enc.fill_(-0.05)
        sae.W_dec.copy_(torch.randn(48, d_mlp) / d_mlp**0.5)
    provenance = {
        "model": model.name,
        "layer": layer,
        "hook": hook,
        "hook_name": f"blocks.{layer}.{hook}",
        "train_config": {"model": asdict(model), "data": asdict(data), "logger": {"kind": "csv"}},
    }
    sae_dir = save_sae(sae, tmp_path / "run" / "sae", provenance)
    run_script(
        "evaluate.py",
        [
            f"sae_path={sae_dir}",
            "stage=dashboard",
            "dashboard.n_contexts=4",
            "dashboard.window=16",
            "dashboard.batch_size=4",
            "dashboard.ablation_units=1",
            "dashboard.steering_units=1",
            "dashboard.steering_tokens=2",
            "dashboard.steering_prompts=[The]",
            "dashboard.part_units=1024",
        ],
        timeout=900,
    )
    site = tmp_path / "run" / "eval" / "dashboard" / "site"
    summary = parse_js_call((site / "data" / "summary.js").read_text())[0]
    assert summary["hook"] == f"blocks.{layer}.{hook}" and summary["direct_logits"] is False
    for kind, n in (("features", 48), ("neurons", d_mlp)):
        index = parse_js_call((site / "data" / kind / "index.js").read_text())[1]
        assert index["n_units"] == n and any(d > 0 for d in index["density"])
        pages = [
            u for p in range(-(-n // 1024)) for u in parse_js_call((site / "data" / kind / f"chunk_{p:04d}.js").read_text())[2]
        ]
        assert len(pages) == n and all(u["logits"] is None for u in pages)
        # what needs no direct path is there: the records and the ablation of the unit that was ablated
        assert any(u["records"] for u in pages)
        ablated = [u for u in pages if u["ablation"]]
        assert len(ablated) == 1 and ablated[0]["ablation"]["positions"] > 0
    assert json.loads((sae_dir / "cfg.json").read_text())["d_in"] == d_mlp
