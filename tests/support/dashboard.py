"""A hand-built SAE with known answers for the feature-browser tests (no test functions here).

Features 0..d-1 and d..2d-1 read +x and -x coordinate by coordinate and write them back, so the
reconstruction is exact; feature 2d is always on (activation 1) and writes `scale` times a
direction that the final norm and the unembedding turn into the logit of one token; feature 2d+1
is always on and writes a random direction of the same size (the control).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae.architectures import SparseAutoencoder, build_sae
from sae.formats.native import save_sae
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig

LAYER = 29  # the last block: its output goes straight to the final norm and the unembedding
HOOK = "hook_resid_post"
TARGET_TOKEN_TEXT = " city"  # a token whose unembedding direction is its own nearest (not true of every token)


def model_config() -> ModelConfig:
    return ModelConfig(name="embedded:smollm2", alias="smollm2", layer=LAYER, hook=HOOK)


def token_direction(bridge, token: int) -> torch.Tensor:
    """W_U[:, token] / γ, unit norm: after the final norm's scale γ it is the token's unembedding
    direction, so it raises that token's logit most (for a token whose direction is its own nearest)."""
    from sae.dashboard.logits import final_norm_scale, unembedding

    gamma = final_norm_scale(bridge)
    v = unembedding(bridge)[:, token] / (gamma if gamma is not None else 1.0)
    return v / v.norm()


def known_sae(bridge, scale: float = 8.0, seed: int = 0) -> tuple[SparseAutoencoder, int, int]:
    """(sae, token feature, target token id)."""
    d = bridge.cfg.d_model
    token = bridge.tokenizer.encode(TARGET_TOKEN_TEXT, add_special_tokens=False)[0]
    sae = build_sae("relu", d, 2 * d + 2)
    g = torch.Generator().manual_seed(seed)
    control = torch.randn(d, generator=g)
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.zero_()
        sae.W_enc[:, :d] = eye
        sae.W_enc[:, d : 2 * d] = -eye
        sae.b_enc.zero_()
        sae.b_enc[2 * d :] = 1.0
        sae.W_dec[:d] = eye
        sae.W_dec[d : 2 * d] = -eye
        sae.W_dec[2 * d] = scale * token_direction(bridge, token)
        sae.W_dec[2 * d + 1] = scale * control / control.norm()
        sae.b_dec.zero_()
    return sae, 2 * d, token


def save_known_sae(bridge, directory: Path, data: DataConfig, scale: float = 8.0) -> tuple[Path, int, int]:
    from dataclasses import asdict

    sae, feature, token = known_sae(bridge, scale)
    mc = model_config()
    provenance = {
        "model": mc.name,
        "layer": mc.layer,
        "hook": mc.hook,
        "hook_name": f"blocks.{mc.layer}.{mc.hook}",
        "train_config": {"model": asdict(mc), "data": asdict(data), "logger": {"kind": "csv"}},
    }
    return save_sae(sae, directory, provenance), feature, token


def write_synthetic_site(
    root: Path,
    n_features: int = 4608,
    d: int = 64,
    n_contexts: int = 120,
    window: int = 16,
    vocab: int = 2000,
    seed: int = 0,
    **settings,
):
    """A site for a random SAE of `n_features` features over random activations (no language model):
    the real statistics, site writer and page, with token ids decoded by the real tokenizer."""
    from transformers import AutoTokenizer

    from sae.dashboard.config import DashboardConfig
    from sae.dashboard.data import DashboardStore, build_units
    from sae.dashboard.logits import logit_weights
    from sae.dashboard.site import write_site
    from sae.dashboard.units import UnitSpace
    from sae.lm.embedded import embedded_model_dir

    torch.manual_seed(seed)
    sae = build_sae("relu", d, n_features)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, n_features) / d**0.5)
        sae.b_enc.copy_(-1.2 - torch.rand(n_features))  # sparse, with a spread of densities
    token_ids = torch.randint(5, vocab, (n_contexts, window))
    acts = torch.randn(n_contexts, window, d)
    w_u = torch.randn(d, vocab)
    cfg = DashboardConfig(
        **{"n_top": 6, "n_quantiles": 2, "per_quantile": 2, "part_units": 1024, "display_tokens": 12, **settings}
    )
    store = DashboardStore(root / "data", {"synthetic": seed, "n": n_features})
    indices = {}
    for kind in cfg.units:
        space = UnitSpace(kind, sae, d)
        fn = lambda units, space=space: logit_weights(space.directions(units, d), w_u, None, cfg.n_logits)
        indices[kind] = build_units(space, token_ids, acts, bos_id=0, cfg=cfg, store=store, logits_fn=fn)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    summary = {"sae_path": "random SAE", "hook": "synthetic", "model": "none", "metrics": {"l0": 12.5}}
    write_site(
        store.root, root / "site", root, indices, tok.decode, summary, "synthetic", cfg.part_units, root / "ratings.sqlite"
    )
    return root / "site", indices, cfg, tok
