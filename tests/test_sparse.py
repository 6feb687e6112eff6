"""The sparse training kernel computes the same features, reconstructions and gradients as the dense path."""

import copy

import pytest
import torch

from sae.model import SparseAutoencoder
from sae.objective import per_input_terms
from sae.resampling import resample_features_
from sae.sparse import encode_decode


def make_sae(d=24, n=96, seed=0, threshold=2.0):
    """An SAE whose ReLU fires on a few percent of latents, with a non-trivial input scale and b_dec."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d, n)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.uniform_(-threshold, -0.5 * threshold)
        sae.W_enc.normal_(0, 0.3 / d**0.5)  # pre-activations ~ N(b_enc, 1) for inputs ~ 2·N(0, 1)
        sae.input_scale.fill_(1.7)
    return sae


def loss_and_grads(sae, x, kernel, sum_squared_error, weighted, max_density=None, x_grad=False):
    x = x.clone().requires_grad_(x_grad)
    kwargs = {} if max_density is None else {"max_density": max_density}
    out = encode_decode(sae, x, torch.relu, kernel, **kwargs)
    reconstruction, l1 = per_input_terms(sae, x, out.x_hat, out.features, weighted, sum_squared_error)
    loss = reconstruction.mean() + 0.3 * l1.mean()
    sae.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_decoder_grad_()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    if x_grad:
        grads["x"] = x.grad.clone()
    return out, loss.detach(), grads


def assert_same(out, loss, grads, ref_out, ref_loss, ref_grads):
    torch.testing.assert_close(out.features, ref_out.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.x_hat, ref_out.x_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        assert ref_grads[name].abs().max() > 0, f"{name}: a zero gradient would not test anything"


@pytest.mark.parametrize("sum_squared_error", [False, True], ids=["mean_se", "sum_se"])
@pytest.mark.parametrize("weighted", [False, True], ids=["l1", "l1_decoder_norm"])
@pytest.mark.parametrize("path", ["sparse", "auto_sparse", "auto_dense"])
def test_gradients_match_the_dense_path(path, sum_squared_error, weighted):
    sae = make_sae()
    x = torch.randn(64, 24) * 2
    ref = loss_and_grads(sae, x, "dense", sum_squared_error, weighted)
    kernel, max_density = {"sparse": ("sparse", None), "auto_sparse": ("auto", 1.0), "auto_dense": ("auto", 0.0)}[path]
    out, loss, grads = loss_and_grads(sae, x, kernel, sum_squared_error, weighted, max_density)
    density = (ref[0].features > 0).float().mean()
    assert 0.005 < density < 0.2, density  # sparse activations, but some in every latent group
    assert out.sparse == (path != "auto_dense") and not ref[0].sparse
    assert_same(out, loss, grads, *ref)


def test_input_gradient_matches_when_inputs_require_it():
    sae = make_sae(seed=3)
    x = torch.randn(32, 24)
    ref = loss_and_grads(sae, x, "dense", False, False, x_grad=True)
    assert_same(*loss_and_grads(sae, x, "sparse", False, False, x_grad=True), *ref)
    assert_same(*loss_and_grads(sae, x, "auto", False, False, max_density=0.0, x_grad=True), *ref)


def test_no_active_latent_at_all():
    sae = make_sae(seed=4, threshold=100.0)
    x = torch.randn(16, 24)
    out, loss, grads = loss_and_grads(sae, x, "sparse", False, False)
    ref_out, ref_loss, ref_grads = loss_and_grads(sae, x, "dense", False, False)
    assert out.sparse and not out.features.any()
    torch.testing.assert_close(out.x_hat, ref_out.x_hat)
    for name in ("W_enc", "b_enc", "W_dec"):
        assert not ref_grads[name].any() and not grads[name].any()
    torch.testing.assert_close(grads["b_dec"], ref_grads["b_dec"])


def topk(k):
    def select(pre):
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return select


def test_topk_selection_matches_autograd_through_the_same_selection():
    sae = make_sae(seed=5, threshold=0.0)
    x = torch.randn(48, 24)
    results = []
    for kernel in ("dense", "sparse"):
        sae.zero_grad(set_to_none=True)
        if kernel == "dense":  # plain autograd of the same selection
            pre = (x * sae.input_scale - sae.b_dec) @ sae.W_enc + sae.b_enc
            f = topk(4)(pre)
            x_hat = (f @ sae.W_dec + sae.b_dec) / sae.input_scale
        else:
            out = encode_decode(sae, x, topk(4), "sparse")
            f, x_hat = out.features, out.x_hat
        loss = ((x - x_hat) ** 2).sum(-1).mean() + 0.1 * f.sum(-1).mean()
        loss.backward()
        results.append((f.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (f_dense, g_dense), (f_sparse, g_sparse) = results
    assert ((f_sparse != 0).sum(-1) == 4).all()
    torch.testing.assert_close(f_sparse, f_dense)
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=1e-4, atol=1e-6)


def test_auto_switches_on_the_active_fraction_and_dense_is_the_module_forward():
    sae = make_sae(seed=6)
    x = torch.randn(32, 24)
    density = float((sae.encode(x) > 0).float().mean())
    assert encode_decode(sae, x, torch.relu, "auto", max_density=density).sparse
    assert not encode_decode(sae, x, torch.relu, "auto", max_density=density * 0.99).sparse
    dense = encode_decode(sae, x, torch.relu, "dense")
    x_hat, f = sae(x)
    assert not dense.sparse and torch.equal(dense.x_hat, x_hat) and torch.equal(dense.features, f)
    with torch.no_grad():  # nothing to differentiate: the module's own forward
        assert not encode_decode(sae, x, torch.relu, "sparse").sparse
    with pytest.raises(ValueError, match="sparse kernel 'fast'"):
        encode_decode(sae, x, torch.relu, "fast")


def test_adam_steps_with_resampling_give_the_same_weights():
    """Five steps of the 2023 recipe (parallel-gradient removal, renormalisation, a resample with Adam reset)."""
    dense = make_sae(seed=7)
    sparse = copy.deepcopy(dense)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 24, generator=generator) * 2 for _ in range(5)]
    resample_inputs = torch.randn(3, 24, generator=generator)
    paths = []
    for sae, kernel in ((dense, "dense"), (sparse, "sparse")):
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.9, 0.99))
        for step, x in enumerate(batches):
            out = encode_decode(sae, x, torch.relu, kernel)
            reconstruction, l1 = per_input_terms(sae, x, out.x_hat, out.features)
            opt.zero_grad(set_to_none=True)
            (reconstruction.mean() + 1e-2 * l1.mean()).backward()
            sae.remove_parallel_decoder_grad_()
            opt.step()
            sae.normalize_decoder_()
            if step == 2:
                resample_features_(sae, opt, torch.tensor([1, 5, 9]), resample_inputs)
            paths.append(out.sparse)
    assert paths == [False] * 5 + [True] * 5
    for (name, p_dense), p_sparse in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_sparse, p_dense, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    start = make_sae(seed=7)
    assert (dense.W_enc - start.W_enc).abs().max() > 1e-3  # the steps did move the weights
