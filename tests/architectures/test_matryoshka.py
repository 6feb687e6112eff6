"""Matryoshka SAE: the loss is the mean of the nested prefixes' reconstruction errors (by hand), training
makes every prefix reconstruct and the first one alone carries the input's main directions (which a
BatchTopK SAE's first latents do not), it saves and loads as itself, and train.py trains it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from support.runs import REPO, read_json, train_tiny

from sae.activations.cache import ActivationCache, cache_key
from sae.architectures import BatchTopKSAE, MatryoshkaSAE, MatryoshkaSettings, build_sae
from sae.core.checks import to_objects
from sae.core.errors import ConfigError
from sae.formats.native import load_sae, save_sae
from sae.formats.run_config import run_configs
from sae.training.config import SAEConfig, TrainConfig, register_configs

register_configs()


def tiny(settings: MatryoshkaSettings) -> MatryoshkaSAE:
    """d_in 2, 4 latents: pre-activations x·W_enc are easy to read off; W_dec rows are unit vectors."""
    sae = MatryoshkaSAE(2, 4, settings)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.5]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.6, 0.8]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_loss_is_the_mean_of_every_prefixs_reconstruction_error_by_hand():
    sae = tiny(MatryoshkaSettings(k=2, prefix_fractions=[0.25, 0.5]))
    assert sae.prefix_sizes == [1, 2, 4]
    x = torch.tensor([[2.0, 1.0]])  # pre = [2, 1, -2, 1.5]: BatchTopK (k·B = 2) keeps latents 0 and 3
    terms = sae.loss(x, 0.0)
    torch.testing.assert_close(terms.features, torch.tensor([[2.0, 0.0, 0.0, 1.5]]))
    # x̂_1 = x̂_2 = 2·[1, 0] = [2, 0]: error mean([0, 1]) = 0.5; x̂_4 = [2, 0] + 1.5·[0.6, 0.8] = [2.9, 1.2]:
    # error mean([0.81, 0.04]) = 0.425; the loss is their mean, the reconstruction returned is the full one.
    torch.testing.assert_close(terms.reconstruction, torch.tensor((0.5 + 0.5 + 0.425) / 3))
    torch.testing.assert_close(terms.total, terms.reconstruction)
    torch.testing.assert_close(terms.x_hat, torch.tensor([[2.9, 1.2]]))
    assert float(terms.auxiliary) == 0 and float(terms.sparsity) == 0
    terms.total.backward()
    # d/dW_dec[i] = (1/3) Σ_{prefixes g holding i} (2/d)(x̂_g − x) f_i: latent 0 is in all three prefixes,
    # latent 3 only in the last.
    torch.testing.assert_close(sae.W_dec.grad[0], torch.tensor([0.0 + 0.0 + 0.9, -1.0 - 1.0 + 0.2]) * 2 / 3)
    torch.testing.assert_close(sae.W_dec.grad[3], torch.tensor([0.9, 0.2]) * 1.5 / 3)
    assert sae.W_dec.grad[1].abs().max() == 0 and sae.W_dec.grad[2].abs().max() == 0
    torch.testing.assert_close(sae.threshold, torch.tensor(1.5))  # BatchTopK's inference threshold: smallest kept
    assert sae.tokens_since_fired.tolist() == [0, 0, 0, 0]  # the trainer counts, after the loss
    sae.observe_firing(terms.counted_fires(), len(x))
    assert sae.tokens_since_fired.tolist() == [0, 1, 1, 0]


def test_auxk_reconstructs_the_full_reconstructions_residual_from_dead_latents():
    sae = tiny(MatryoshkaSettings(k=1, k_aux=1, aux_coefficient=1 / 32, dead_tokens=5, prefix_fractions=[0.5]))
    sae.tokens_since_fired.copy_(torch.tensor([0, 5, 7, 0]))  # latents 1 and 2 dead
    x = torch.tensor([[2.0, 0.5]])  # pre = [2, 0.5, -2, 1.25]: keeps latent 0, x̂_2 = x̂_4 = [2, 0]
    terms = sae.loss(x, 0.0)
    torch.testing.assert_close(terms.reconstruction, torch.tensor(0.125))  # mean over both prefixes of mean([0, 0.25])
    # residual e = [0, 0.5]; the top dead pre-activation is latent 1 (0.5): ê = 0.5·[0.6, 0.8] = [0.3, 0.4]
    torch.testing.assert_close(terms.auxiliary, torch.tensor(0.05 / 32))
    torch.testing.assert_close(terms.total, torch.tensor(0.125 + 0.05 / 32))


def compose_sae(*overrides: str) -> SAEConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sae=matryoshka", *overrides])
    return to_objects(cfg, TrainConfig).sae


def test_the_configuration_gives_bussmanns_prefixes_and_bad_ones_name_the_field():
    cfg = compose_sae()
    assert (cfg.architecture, cfg.k, cfg.batch_size, cfg.tokens) == ("matryoshka", 32, 1024, 1_000_000)  # the tuning file
    sae = build_sae("matryoshka", 576, 576 * cfg.expansion, cfg.architecture_settings())
    assert sae.prefix_sizes == [288, 576, 1152, 2304, 4608]
    for fractions in ("[0.5,0.25]", "[0.25,1.0]", "[0]"):
        with pytest.raises(ConfigError, match=r"sae.settings.prefix_fractions=.*must increase strictly"):
            compose_sae(f"sae.settings.prefix_fractions={fractions}")
    with pytest.raises(ConfigError, match=r"prefix_fractions=\[0.001\] give prefixes of \[0, 16\] latents"):
        build_sae("matryoshka", 8, 16, {"k": 2, "prefix_fractions": [0.001]})


# --- the prefix property on data with a few frequent and many rare directions ------------------------

D, N, K = 32, 64, 4
FREQUENT = 4  # directions present in half the inputs; the other 60 in 3% each


def synthetic(n: int, generator: torch.Generator) -> torch.Tensor:
    directions = torch.nn.functional.normalize(torch.randn(N, D, generator=torch.Generator().manual_seed(0)), dim=1)
    present = torch.rand(n, N, generator=generator) < torch.tensor([0.5] * FREQUENT + [0.03] * (N - FREQUENT))
    return (present * (1 + torch.rand(n, N, generator=generator))) @ directions


@pytest.fixture
def one_thread():
    """These SAEs are tiny: one thread runs their products fastest, and two cores shared with other jobs slowest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(name: str, steps: int = 200):
    torch.manual_seed(0)
    settings = {"k": K, "dead_tokens": 2048}
    if name == "matryoshka":
        settings["prefix_fractions"] = [1 / 16, 1 / 8, 1 / 4, 1 / 2]
    sae = build_sae(name, D, N, settings)
    data = torch.Generator().manual_seed(1)
    sae.initialise_from_data_(synthetic(4096, data), scale_inputs=False, b_dec_init="geometric_median")
    heldout = synthetic(4096, torch.Generator().manual_seed(2))
    before = MatryoshkaSAE.prefix_errors(sae, heldout) if name == "matryoshka" else None
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        terms = sae.loss(synthetic(256, data), 0.0)
        optimizer.zero_grad()
        terms.total.backward()
        sae.before_optimizer_step_()
        optimizer.step()
        sae.after_optimizer_step_()
    return sae, heldout, before


def unexplained(sae, x: torch.Tensor, latents: int) -> float:
    """Fraction of variance the first `latents` latents leave unexplained."""
    with torch.no_grad():
        f = sae.encode(x)
        f[:, latents:] = 0
        return float((x - sae.decode(f)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_training_makes_every_prefix_reconstruct_and_the_first_alone_carries_the_frequent_directions(one_thread):
    matryoshka, heldout, before = train("matryoshka")
    after = matryoshka.prefix_errors(heldout)
    assert matryoshka.prefix_sizes == [4, 8, 16, 32, 64]
    assert (after < 0.8 * before).all(), (before, after)  # each prefix's own reconstruction improved
    assert (after[1:] <= after[:-1]).all()  # each larger prefix reconstructs at least as well
    batchtopk, _, _ = train("batchtopk")
    assert isinstance(batchtopk, BatchTopKSAE) and not isinstance(batchtopk, MatryoshkaSAE)
    # Its first 4 latents (1/16 of the dictionary) alone: the Matryoshka SAE explains a third or more of the
    # variance with them (the 4 frequent directions carry ~half of it); a BatchTopK SAE's first 4 are 4 of its
    # 64 features, in no order, and explain little. The whole dictionaries reconstruct about equally well.
    first_m, first_b = unexplained(matryoshka, heldout, 4), unexplained(batchtopk, heldout, 4)
    assert first_m < 0.7 and first_m < first_b - 0.2, (first_m, first_b)
    assert abs(unexplained(matryoshka, heldout, N) - unexplained(batchtopk, heldout, N)) < 0.1


def test_saves_and_loads_as_itself_with_its_prefixes_and_threshold(tmp_path, one_thread):
    sae, heldout, _ = train("matryoshka", steps=20)
    assert float(sae.threshold) > 0
    save_sae(sae, tmp_path, {"model": "m"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "matryoshka" and cfg["settings"]["prefix_fractions"] == [1 / 16, 1 / 8, 1 / 4, 1 / 2]
    loaded, _ = load_sae(tmp_path)
    assert type(loaded) is MatryoshkaSAE and loaded.settings == sae.settings and loaded.prefix_sizes == sae.prefix_sizes
    for key, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(loaded.encode(heldout), sae.encode(heldout))
    torch.testing.assert_close(loaded.prefix_errors(heldout), sae.prefix_errors(heldout))


@pytest.mark.slow
def test_train_py_trains_a_matryoshka_sae_that_loads_as_itself(tmp_path, activation_cache_dir):
    steps = 30
    train_tiny(
        tmp_path,
        activation_cache_dir,
        "sae=matryoshka",
        f"sae.tokens={256 * steps}",
        "sae.k=8",
        "sae.settings.dead_tokens=2560",
        "trainer.eval_tokens=128",
        "logger=csv",
    )
    summary = read_json(tmp_path / "summary.json")
    assert summary["steps"] == steps and summary["train/l0"] == pytest.approx(8)  # k on average per input
    assert math.isfinite(summary["eval/reconstruction_score"])
    sae, cfg = load_sae(tmp_path)
    assert type(sae) is MatryoshkaSAE and cfg["architecture"] == "matryoshka"
    assert cfg["train_config"]["sae"]["recipe"] == "matryoshka"
    assert sae.prefix_sizes == [72, 144, 288, 576, 1152]  # 2x of d_in 576
    assert float(sae.threshold) > 0
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_features))
    # On the activations it trained on, every prefix reconstructs, the larger ones better.
    run = run_configs(cfg)
    x = ActivationCache(Path(activation_cache_dir) / cache_key(run.model, run.data, run.activations)).sample(2048)
    errors = sae.prefix_errors(x)
    baseline = ((x - x.mean(0)) * sae.input_scale).pow(2).mean()
    assert (errors < baseline).all() and (errors[1:] <= errors[:-1]).all(), (errors, baseline)
