"""The first-letter absorption metric: known answers on SAEs built by hand over synthetic activations whose
letter directions are known, the per-word formulas by hand, and the real model's words end to end."""

from __future__ import annotations

import pytest
import torch

from sae.architectures import build_sae
from sae.evaluation.absorption import (
    LETTERS,
    AbsorptionConfig,
    LinearProbe,
    ProbeData,
    absorption,
    absorption_fractions,
    absorption_from_probe_data,
    alpha_tokens,
    fit_logistic,
    full_absorption,
    icl_prompts,
    probe_data_from_activations,
    probe_data_path,
)

# 12 dimensions: 0 "starts with a", 1 "starts with b", 2-6 one specific word each, 7-11 unrelated variation.
D, A, B, SPECIFIC, NOISE = 12, 0, 1, range(2, 7), range(7, 12)
PARTIAL = 4  # the specific word on which the main "a" latent still fires weakly (0.2)


def e(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def words(letter_dim: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n inputs with the letter's direction and some unrelated variation."""
    x = torch.zeros(n, D)
    x[:, letter_dim] = 1
    x[:, list(NOISE)] = 0.3 * torch.rand(n, len(NOISE), generator=generator)
    return x


def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train: 30 "a", 30 "b" and 30 "c" words (which have neither direction). Test: 15 ordinary "a" words, the 5
    specific "a" words (e_a + e_j), 20 "b"."""
    g = torch.Generator().manual_seed(0)
    train_x = torch.cat([words(A, 30, g), words(B, 30, g), words(B, 30, g) * torch.tensor([0.0] * 7 + [1.0] * 5)])
    train_y = torch.tensor([0] * 30 + [1] * 30 + [2] * 30)
    specific = torch.stack([e(A) + e(j) for j in SPECIFIC])
    test_x = torch.cat([words(A, 15, g), specific, words(B, 20, g)])
    test_y = torch.tensor([0] * 20 + [1] * 20)
    return train_x, train_y, test_x, test_y


def hand_built_sae(absorbing: bool):
    """Latent 0 reads and writes "a", latent 1 "b", latents 7-11 the unrelated dimensions. With `absorbing`,
    latent j (2-6) fires only on specific word j with decoder (e_a + e_j)/√2, and latent 0 is pushed off
    there (fully on 4 words, down to 0.2 on the last); without, latent j writes e_j alone and latent 0 fires
    on every "a" word."""
    sae = build_sae("relu", D, D)
    W_enc, W_dec = torch.zeros(D, D), torch.zeros(D, D)
    W_enc[:, A], W_dec[A] = e(A), e(A)
    W_enc[:, B], W_dec[B] = e(B), e(B)
    for j in NOISE:
        W_enc[:, j], W_dec[j] = e(j), e(j)
    for j in SPECIFIC:
        if absorbing:
            W_enc[:, j] = 2**0.5 * e(j)
            W_dec[j] = (e(A) + e(j)) / 2**0.5
            W_enc[j, A] = -0.8 if j == SPECIFIC[PARTIAL] else -2.0
        else:
            W_enc[:, j], W_dec[j] = e(j), e(j)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def known_probe() -> LinearProbe:
    """Letter a: 10 x_a − 5; letter b: 10 x_b − 5; every other letter never fires."""
    weight, bias = torch.zeros(len(LETTERS), D), torch.full((len(LETTERS),), -1.0)
    weight[0, A], weight[1, B], bias[:2] = 10.0, 10.0, -5.0
    return LinearProbe(weight, bias)


def test_an_absorbing_latent_per_specific_word_gives_the_counted_absorption_rate():
    train_x, train_y, test_x, test_y = dataset()
    data = ProbeData(train_x, train_y, test_x, test_y, known_probe(), [f"w{i}" for i in range(len(test_y))])
    result = absorption_from_probe_data(hand_built_sae(absorbing=True), data, AbsorptionConfig())
    a, b = result.letters
    assert (a.letter, b.letter) == ("a", "b") and (a.main_latents, b.main_latents) == ([A], [B])
    assert (a.probe_true_positives, b.probe_true_positives) == (20, 20) and a.probe_f1 == b.probe_f1 == 1.0
    # 4 of the 20 "a" words fully absorbed (fraction 1 each); on the fifth latent 0 keeps 0.2 of the projection 1
    # and the absorbing latent carries 1: A = min(1, 1 − 0.2) = 0.8, fraction 0.8 / (0.8 + 0.2) = 0.8.
    assert a.full_absorptions == 4 and a.full_absorption_rate == pytest.approx(4 / 20)
    assert a.absorption_fraction == pytest.approx((4 + 0.8) / 20)
    assert a.sparse_probe_f1 == pytest.approx(2 * 15 / (2 * 15 + 5))  # the main latent misses the 5 specific words
    assert b.absorption_fraction == b.full_absorption_rate == 0.0
    assert result.mean_absorption_fraction == pytest.approx(4.8 / 20 / 2)
    assert result.mean_full_absorption_rate == pytest.approx(4 / 20 / 2)
    assert result.mean_main_latents == 1.0 and (result.train_words, result.test_words) == (90, 40)
    assert result.mean_probe_f1 == 1.0 and result.mean_sparse_probe_f1 == pytest.approx((30 / 35 + 1) / 2)


def test_an_sae_whose_main_latent_fires_on_every_word_absorbs_nothing():
    train_x, train_y, test_x, test_y = dataset()
    data = ProbeData(train_x, train_y, test_x, test_y, known_probe(), [])
    result = absorption_from_probe_data(hand_built_sae(absorbing=False), data, AbsorptionConfig())
    assert [r.letter for r in result.letters] == ["a", "b"]
    assert all(r.probe_true_positives == 20 and r.sparse_probe_f1 == 1.0 for r in result.letters)
    assert result.mean_absorption_fraction == 0.0 and result.mean_full_absorption_rate == 0.0


def test_a_fitted_probe_finds_the_letter_directions_and_the_same_absorption():
    train_x, train_y, test_x, test_y = dataset()
    data = probe_data_from_activations(train_x, train_y, test_x, test_y, [])
    for letter, dim in ((0, A), (1, B)):
        direction = data.probe.weight[letter] / data.probe.weight[letter].norm()
        # The specific words' dimensions never vary in training and get no weight.
        assert direction[dim] > 0.9 and (direction[list(SPECIFIC)] == 0).all()
        assert ((data.probe.scores(test_x)[:, letter] > 0) == (test_y == letter)).all()
    result = absorption_from_probe_data(hand_built_sae(absorbing=True), data, AbsorptionConfig())
    # The specific words carry nothing but e_a and their own e_j, so along any p̂ = α e_a + (other dimensions
    # than the e_j) the projections all scale by α and the fractions are exactly those of the known probe.
    assert result.mean_absorption_fraction == pytest.approx(4.8 / 20 / 2)
    assert result.mean_full_absorption_rate == pytest.approx(4 / 20 / 2)
    assert absorption_from_probe_data(hand_built_sae(absorbing=False), data, AbsorptionConfig()).mean_absorption_fraction == 0


def test_fit_logistic_matches_balanced_l2_logistic_regression_optimality():
    """At the optimum the gradient of Σ_i s_i ℓ_i + ½‖w‖² vanishes (w in units of the inputs' overall scale σ)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
    y = ((x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(200, generator=g)) > 1.0).double()
    probe = fit_logistic(x, y[:, None])
    mean = x.double().mean(0)
    std = (x.double() - mean).pow(2).mean().sqrt()
    z = (x.double() - mean) / std
    n_pos = y.sum()
    weights = torch.where(y > 0, 200 / (2 * n_pos), 200 / (2 * (200 - n_pos)))

    def gradient(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=weights, reduction="sum")
        (loss + 0.5 * w.pow(2).sum()).backward()
        return torch.cat([w.grad, b.grad[None]])

    fitted = gradient(probe.weight[0].double() * std, probe.bias[0].double() + (probe.weight[0].double() * mean).sum())
    start = gradient(torch.zeros(5, dtype=torch.float64), torch.zeros((), dtype=torch.float64))
    assert fitted.norm() < 1e-4 * start.norm(), (fitted, start)  # float32 weights: zero to their rounding


def test_absorption_fraction_and_full_absorption_by_hand():
    cfg = AbsorptionConfig()
    cos = torch.tensor([1.0, 0.5, 0.05, 0.3])  # latent 0 is the main latent; latent 2 is too far from p̂ to absorb
    # rows: [main, absorber, misaligned, absorber] contributions; P = x·p̂ per row
    contributions = torch.tensor(
        [
            [0.0, 0.3, 0.9, 0.2],  # T = 0.5 >= 0.4, M = 0: fraction 1; the top latent (2) has cos 0.05 >= 0.025: full
            [0.5, 0.3, 0.0, 0.0],  # T = 0.3 < 0.4: 0
            [1.2, 0.5, 0.0, 0.0],  # M >= P: 0
            [0.2, 0.5, 0.0, 0.4],  # A = min(0.9, 1 − 0.2) = 0.8: 0.8 / 1.0
            [0.0, 0.5, 0.0, 0.0],  # P <= 0: 0
        ]
    )
    projection = torch.tensor([1.0, 1.0, 1.0, 1.0, -0.5])
    fractions = absorption_fractions(projection, contributions, cos, [0], cfg)
    torch.testing.assert_close(fractions, torch.tensor([1.0, 0.0, 0.0, 0.8, 0.0]))
    features = contributions  # the main latent fires where its contribution is non-zero
    assert full_absorption(projection, contributions, features, cos, [0], cfg).tolist() == [True, False, False, False, False]
    tight = AbsorptionConfig(full_absorption_cos_threshold=0.1)
    assert not full_absorption(projection, contributions, features, cos, [0], tight).any()


def test_bad_settings_name_the_field():
    from sae.core.errors import ConfigError

    with pytest.raises(ConfigError, match="absorption.train_fraction=1"):
        AbsorptionConfig(train_fraction=1)
    with pytest.raises(ConfigError, match="absorption.prompt_template"):
        AbsorptionConfig(prompt_template="first letter:")


# --- the real model's vocabulary and activations ------------------------------------------------------


@pytest.mark.slow
def test_real_words_prompts_probe_and_a_stored_probe_reused(tmp_path):
    from sae.lm.bridge import hook_name, load_language_model
    from sae.lm.config import ModelConfig

    model_cfg = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=2, hook="hook_mlp_out")
    bridge = load_language_model(model_cfg)
    tokenizer = bridge.tokenizer
    vocab = alpha_tokens(tokenizer)
    assert len(vocab) > 10_000 and all(tokenizer.decode([i]) == text for i, text in vocab[:50])
    cfg = AbsorptionConfig(n_words=120, icl_examples=2, batch_size=16)
    (word_id, word), example = vocab[1000], vocab[2000]
    prompt = icl_prompts([(word_id, word), example], tokenizer, 1, cfg, __import__("random").Random(0))[0]
    text = tokenizer.decode(prompt)
    assert prompt[-1] == word_id and text.endswith("\n" + word)  # the word is its own token, read last
    assert f"{example[1]} has the first letter: {example[1].strip()[0].upper()}\n" in text  # one example, answered
    hook = hook_name(model_cfg)
    sae = build_sae("relu", 576, 1152)
    path = probe_data_path(tmp_path, model_cfg.name, model_cfg.dtype, hook, cfg)
    first = absorption(sae, bridge, hook, cfg, path)
    assert path.exists() and (first.train_words, first.test_words) == (96, 24)
    assert first.letters and all(0 <= r.absorption_fraction <= 1 for r in first.letters if r.probe_true_positives)
    assert 0 <= first.mean_probe_f1 <= 1 and first.as_dict()["letters"][0]["letter"] in LETTERS

    def no_model():
        raise AssertionError("the stored words and probe should have been reused")

    assert absorption(sae, no_model, hook, cfg, path).as_dict() == first.as_dict()  # (NaN ≠ NaN: compared as JSON)
