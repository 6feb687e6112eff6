"""ReLU SAE math: unit-norm decoder, removal of the parallel gradient, geometric median, both recipes' loss terms, init."""

import torch

from sae.architectures import ReLUSAE, ReLUSettings, geometric_median

RECIPE_2024 = ReLUSettings(
    unit_norm_decoder=False, l1_weighted_by_decoder_norm=True, sum_squared_error=True, init_decoder_norm=0.1, tied_init=True
)


def _train_step(sae, opt, x, l1):
    opt.zero_grad()
    sae.loss(x, l1).total.backward()
    sae.before_optimizer_step_()
    opt.step()
    sae.after_optimizer_step_()


def test_decoder_rows_stay_unit_norm_after_adam_steps():
    torch.manual_seed(0)
    sae = ReLUSAE(16, 64)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(256, 16) * 3
    for _ in range(20):
        _train_step(sae, opt, x, 1e-3)
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_2024_settings_leave_decoder_norms_free():
    torch.manual_seed(0)
    sae = ReLUSAE(16, 64, RECIPE_2024)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(256, 16) * 3
    for _ in range(20):
        _train_step(sae, opt, x, 1e-3)
    assert (sae.W_dec.norm(dim=1) - 0.1).abs().max() > 1e-2


def test_parallel_gradient_component_is_removed_and_the_rest_kept():
    torch.manual_seed(1)
    sae = ReLUSAE(8, 32)
    sae.loss(torch.randn(64, 8), 1e-2).total.backward()
    before = sae.W_dec.grad.clone()
    sae.before_optimizer_step_()
    after = sae.W_dec.grad
    # No component along any decoder row survives...
    assert (after * sae.W_dec).sum(dim=1).abs().max() < 1e-6
    # ...and what was removed is exactly that component.
    d = sae.W_dec.detach()
    expected = before - (before * d).sum(dim=1, keepdim=True) * d
    torch.testing.assert_close(after, expected)
    assert (before - after).abs().max() > 1e-6  # the test would notice a no-op


def test_geometric_median_of_known_sets():
    # Four corners of a square plus its centre: the median is the centre.
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    torch.testing.assert_close(geometric_median(square), torch.tensor([1.0, 1.0]), atol=1e-4, rtol=0)
    # Robust to an outlier, unlike the mean: three points at 0 and one far away stay at 0.
    pts = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1000.0, 0.0]])
    assert geometric_median(pts).norm() < 1e-3
    # Collinear odd set: the median is the middle point.
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    torch.testing.assert_close(geometric_median(line), torch.tensor([1.0, 0.0]), atol=1e-3, rtol=0)


def test_2023_loss_terms_match_the_formula():
    torch.manual_seed(2)
    sae = ReLUSAE(4, 12)
    x = torch.randn(10, 4)
    terms = sae.loss(x, 0.5)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    mse = ((x - x_hat) ** 2).mean()
    l1 = f.abs().sum(dim=1).mean()
    torch.testing.assert_close(terms.reconstruction, mse)
    torch.testing.assert_close(terms.sparsity, l1)
    torch.testing.assert_close(terms.total, mse + 0.5 * l1)
    assert float(terms.auxiliary) == 0.0


def test_2024_loss_terms_match_the_formula():
    torch.manual_seed(2)
    sae = ReLUSAE(4, 12, RECIPE_2024)
    with torch.no_grad():
        sae.input_scale.fill_(3.0)
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(12, 1) + 0.5)
    x = torch.randn(10, 4)
    terms = sae.loss(x, 0.5)
    f = torch.relu((3 * x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = (f @ sae.W_dec + sae.b_dec) / 3
    sse = ((3 * (x - x_hat)) ** 2).sum(dim=1).mean()
    weighted_l1 = (f * sae.W_dec.norm(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(terms.reconstruction, sse)
    torch.testing.assert_close(terms.sparsity, weighted_l1)
    torch.testing.assert_close(terms.total, sse + 0.5 * weighted_l1)


def test_input_scale_applies_before_encoding_and_is_undone_after_decoding():
    torch.manual_seed(3)
    sae = ReLUSAE(6, 9)
    sae.input_scale.fill_(4.0)
    x = torch.randn(5, 6)
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.relu((4.0 * x - sae.b_dec) @ sae.W_enc + sae.b_enc))
    torch.testing.assert_close(sae.decode(f), (f @ sae.W_dec + sae.b_dec) / 4.0)


def test_2024_init_ties_the_encoder_to_a_small_decoder():
    sae = ReLUSAE(16, 64, RECIPE_2024)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((64,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


def test_untied_encoder_init_uses_fan_in_d_in():
    """kaiming-uniform(a=√5) bound is 1/√fan_in; a feature's fan-in is d_in, not n_features (that would be √expansion smaller)."""
    torch.manual_seed(0)
    d_in, n = 16, 1024
    sae = ReLUSAE(d_in, n)
    bound = 1 / d_in**0.5
    w = sae.W_enc.abs()
    assert w.max() <= bound and w.max() > 0.99 * bound
    assert abs(w.mean() - bound / 2) < 0.01 * bound  # uniform on [-bound, bound]: E|w| = bound/2
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(n))  # 2023: unit-norm decoder rows
