"""Reconstruction score and activation metrics on the real embedded model."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.runs import run_script, script_env

from sae.activations.harvest import harvest
from sae.architectures import ReLUSAE as SparseAutoencoder
from sae.evaluation.measures import explained_variance
from sae.evaluation.spliced import next_token_sums, sae_reconstruction, spliced_loss
from sae.evaluation.stats import DEFAULT_MEMORY_BUDGET, activation_stats, mean_pairwise_cosine, rows_per_chunk
from sae.formats.native import save_sae
from sae.lm.bridge import bos_token_id, hook_name, load_language_model
from sae.lm.config import ModelConfig
from sae.text.contexts import heldout_tokens
from sae.text.sources import DataConfig

MODEL = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=2)
DATA = DataConfig(source="wiki_offline", alias="wiki", context_length=32)


@pytest.fixture(scope="module")
def bridge():
    return load_language_model(MODEL)


@pytest.fixture(scope="module")
def tokens(bridge):
    return heldout_tokens(bridge.tokenizer, DATA, 96, bos_token_id(bridge))


def perfect_sae(d: int) -> SparseAutoencoder:
    """A real SAE that reconstructs exactly: features relu(x̄) and relu(−x̄), decoded as their difference."""
    sae = SparseAutoencoder(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.normal_()
    return sae


def zero_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, d)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def test_heldout_tokens_are_bos_started_contexts(tokens, bridge):
    assert tokens.shape == (3, 32)
    assert torch.all(tokens[:, 0] == bos_token_id(bridge))


def test_reconstruction_score_is_one_for_a_perfect_sae(bridge, tokens):
    d = bridge.cfg.d_model
    result = spliced_loss(bridge, hook_name(MODEL), tokens, sae_reconstruction(perfect_sae(d)), bos_token_id(bridge))
    assert result.ce_zero_ablated > result.ce_clean + 0.01  # ablating this hook must matter, or the score means nothing
    assert result.reconstruction_score == pytest.approx(1.0, abs=1e-3)
    assert result.kl_score == pytest.approx(1.0, abs=1e-3)
    assert result.tokens == tokens.numel() - len(tokens)


def test_reconstruction_score_is_zero_for_a_zero_reconstruction(bridge, tokens):
    d = bridge.cfg.d_model
    result = spliced_loss(bridge, hook_name(MODEL), tokens, sae_reconstruction(zero_sae(d)), bos_token_id(bridge))
    assert result.reconstruction_score == pytest.approx(0.0, abs=1e-6)
    assert result.kl_score == pytest.approx(0.0, abs=1e-6)
    # A random SAE lands somewhere else: the score responds to what is spliced in.
    noisy = spliced_loss(bridge, hook_name(MODEL), tokens, sae_reconstruction(SparseAutoencoder(d, 2 * d)), bos_token_id(bridge))
    assert noisy.reconstruction_score != pytest.approx(0.0, abs=1e-3)


def test_next_token_sums_equal_log_softmax_and_kl_div():
    torch.manual_seed(0)
    tokens = torch.randint(101, (2, 37))
    logits = [torch.randn(2, 37, 101) * scale for scale in (3.0, 2.0, 4.0)]
    sums = next_token_sums(logits, tokens, rows=8)  # 36 predictions per context: chunks of 8 and a rest of 4
    logp = [F.log_softmax(x[:, :-1].double(), dim=-1).flatten(0, 1) for x in logits]
    targets = tokens[:, 1:].reshape(-1)
    ce = [F.nll_loss(lp, targets, reduction="sum") for lp in logp]
    kl = [F.kl_div(lp, logp[0], log_target=True, reduction="sum") for lp in logp[1:]]
    assert sums.tolist() == pytest.approx(torch.stack([*ce, *kl]).tolist(), rel=1e-5)


def test_zero_ablated_losses_are_computed_once_per_token_batch(bridge, tokens, monkeypatch):
    d, bos = bridge.cfg.d_model, bos_token_id(bridge)
    torch.manual_seed(0)
    first, second = SparseAutoencoder(d, 2 * d), SparseAutoencoder(d, 2 * d)
    alone = [spliced_loss(bridge, hook_name(MODEL), tokens, sae_reconstruction(s), bos, 2) for s in (first, second)]
    patched_runs = []
    run_with_hooks = bridge.run_with_hooks
    monkeypatch.setattr(bridge, "run_with_hooks", lambda *a, **k: patched_runs.append(1) or run_with_hooks(*a, **k))
    memo: dict = {}
    shared = [spliced_loss(bridge, hook_name(MODEL), tokens, sae_reconstruction(s), bos, 2, memo) for s in (first, second)]
    # 3 contexts in batches of 2: the first SAE runs zero-ablated and reconstructed per batch, the second reconstructed only.
    assert len(patched_runs) == 2 * 2 + 2
    assert [r.as_dict() for r in shared] == [r.as_dict() for r in alone]
    assert alone[0].reconstruction_score != alone[1].reconstruction_score


@pytest.mark.parametrize("budget", [DEFAULT_MEMORY_BUDGET, 7 * 4 * 4 * 2 * 64])  # the second: 7 rows per chunk
def test_activation_metrics_match_numpy(bridge, budget):
    acts = torch.cat(list(islice(harvest(bridge, MODEL, DATA, batch_size=8, split="heldout"), 3)))[:600]
    torch.manual_seed(0)
    sae = SparseAutoencoder(acts.shape[1], 2 * acts.shape[1])
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(dim=0))
    # Streamed in uneven chunks, as evaluate.py does.
    stats = activation_stats(sae, iter([acts[:123], acts[123:400], acts[400:]]), max_tokens=550, memory_budget=budget)
    counts = stats.counts()
    stats = stats.result()
    x = acts[:550].double().numpy()
    with torch.no_grad():
        x_hat, f = sae(acts[:550])
    x_hat, f = x_hat.double().numpy(), f.double().numpy()
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    ev_about_zero = 1 - ((x - x_hat) ** 2).sum() / (x**2).sum()  # the wrong formula a public library shipped
    assert stats["tokens"] == 550
    assert stats["explained_variance"] == pytest.approx(ev, rel=1e-6, abs=1e-9)
    assert explained_variance(acts[:550].double(), torch.from_numpy(x_hat)).item() == pytest.approx(ev, rel=1e-6)
    assert abs(ev - ev_about_zero) > 1e-3  # these activations have a mean, so the two formulas differ
    assert stats["mse"] == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-6)
    assert stats["l0"] == pytest.approx((f > 0).sum(axis=1).mean(), rel=1e-9)
    assert stats["l1"] == pytest.approx(np.abs(f).sum(axis=1).mean(), rel=1e-6)
    assert counts.tolist() == (f > 0).sum(axis=0).tolist()
    cos = (x * x_hat).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1))
    assert stats["cosine_similarity"] == pytest.approx(cos.mean(), rel=1e-6)
    assert stats["norm_ratio"] == pytest.approx((np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x, axis=1)).mean(), rel=1e-6)


def test_mean_pairwise_cosine_matches_all_pairs():
    v = torch.randn(50, 8) + 0.5
    u = v / v.norm(dim=1, keepdim=True)
    sims = u @ u.T
    brute = sims[~torch.eye(50, dtype=torch.bool)].mean().item()
    assert mean_pairwise_cosine(v) == pytest.approx(brute, rel=1e-6)


def test_chunk_rows_follow_the_memory_budget():
    """A 256x SAE of a 768-wide model: a chunk's feature activations (and the encoder's temporaries) fit the budget."""
    n_features = 256 * 768
    rows = rows_per_chunk(n_features)
    assert 4 * rows * n_features * 4 <= DEFAULT_MEMORY_BUDGET < 4 * (rows + 1) * n_features * 4
    assert rows_per_chunk(10**12) == 1  # never zero rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_statistics_on_the_gpu_equal_the_cpu():
    torch.manual_seed(0)
    x = torch.randn(3000, 32) + 0.3
    sae = SparseAutoencoder(32, 256)
    cpu = activation_stats(sae, iter([x[:1000], x[1000:]]), 2500, memory_budget=2**16)
    gpu = activation_stats(sae.to("cuda"), iter([x[:1000], x[1000:]]), 2500, memory_budget=2**16)
    assert gpu.fire_counts.device.type == "cuda"
    assert gpu.counts().tolist() == cpu.counts().tolist()
    for k, v in cpu.result().items():
        assert gpu.result()[k] == pytest.approx(v, rel=1e-5), k


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_or_wrong_sae_path_is_one_line(tmp_path):
    _one_line_error(run_script("evaluate.py", [], check=False, timeout=300), "sae_path is missing", "sae_path=<")
    _one_line_error(
        run_script("evaluate.py", [f"sae_path={tmp_path / 'nothing'}"], check=False, timeout=300),
        "sae_path=",
        "no sae.safetensors",
    )


def test_openai_without_key_fails_before_any_work(tmp_path):
    """stage=all: the key is checked before the metrics stage and the records pass start."""
    run_dir = tmp_path / "run"
    save_sae(
        SparseAutoencoder(8, 16),
        run_dir / "sae",
        {
            "model": MODEL.name,
            "layer": 2,
            "hook": MODEL.hook,
            "hook_name": hook_name(MODEL),
            "train_config": {
                "model": {"name": MODEL.name, "alias": "smollm2", "layer": 2},
                "data": {"source": "wiki_offline", "alias": "wiki"},
            },
        },
    )
    env = {**script_env(), "SAE_TEST_NO_SUCH_KEY": ""}
    proc = run_script(
        "evaluate.py",
        [f"sae_path={run_dir}", "stage=all", "explainer=openai", "explainer.api_key_env=SAE_TEST_NO_SUCH_KEY"],
        check=False,
        timeout=300,
        env=env,
    )
    _one_line_error(proc, "SAE_TEST_NO_SUCH_KEY", "explainer.api_key_env=null")
    assert not (run_dir / "eval" / "parts").exists() and not (run_dir / "eval" / "interp").exists()
