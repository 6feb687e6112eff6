"""The sparse training kernel computes the same features, reconstructions and gradients as the dense path."""

import copy

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from support.runs import REPO
from torch.utils.data import DataLoader

from sae.architectures import ReLUSAE, ReLUSettings
from sae.architectures.batchtopk import BatchTopKSAE, BatchTopKSettings
from sae.architectures.sparse import AUTO_SPARSE, decode, encode_decode
from sae.architectures.topk import TopKSAE, TopKSettings
from sae.core.checks import to_objects
from sae.core.errors import ConfigError
from sae.training.config import SAEConfig, TrainConfig, register_configs
from sae.training.module import SAETrainingModule
from sae.training.resampling import resample_features_


def make_sae(d=24, n=96, seed=0, threshold=2.0, **settings):
    """A ReLU SAE firing on a few percent of latents, with a non-trivial input scale and b_dec."""
    torch.manual_seed(seed)
    sae = ReLUSAE(d, n, ReLUSettings(**settings))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.uniform_(-threshold, -0.5 * threshold)
        sae.W_enc.normal_(0, 0.3 / d**0.5)  # pre-activations ~ N(b_enc, 1) for inputs ~ 2·N(0, 1)
        sae.input_scale.fill_(1.7)
    return sae


def loss_and_grads(sae, x, kernel, max_density=None, x_grad=False):
    """The architecture's own loss terms on `encode_decode`'s output; gradients after the parallel-gradient removal."""
    x = x.clone().requires_grad_(x_grad)
    kwargs = {} if max_density is None else {"max_density": max_density}
    out = encode_decode(sae, x, torch.relu, kernel, **kwargs)
    reconstruction, l1 = sae.per_input_loss(x, out.x_hat, out.features)
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
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        assert ref_grads[name].abs().max() > 0, f"{name}: a zero gradient would not test anything"


@pytest.mark.parametrize("sum_squared_error", [False, True], ids=["mean_se", "sum_se"])
@pytest.mark.parametrize("weighted", [False, True], ids=["l1", "l1_decoder_norm"])
@pytest.mark.parametrize("path", ["sparse", "auto_sparse", "auto_dense"])
def test_gradients_match_the_dense_path(path, sum_squared_error, weighted):
    sae = make_sae(sum_squared_error=sum_squared_error, l1_weighted_by_decoder_norm=weighted)
    x = torch.randn(64, 24) * 2
    ref = loss_and_grads(sae, x, "dense")
    kernel, max_density = {"sparse": ("sparse", None), "auto_sparse": ("auto", 1.0), "auto_dense": ("auto", 0.0)}[path]
    out, loss, grads = loss_and_grads(sae, x, kernel, max_density)
    density = (ref[0].features > 0).float().mean()
    assert 0.005 < density < 0.2, density  # sparse activations, but some in every latent group
    assert out.sparse == (path != "auto_dense") and not ref[0].sparse
    assert_same(out, loss, grads, *ref)
    if out.sparse:  # counted from the active pairs: the trainer's per-latent fire counts
        assert torch.equal(out.fire_counts, (ref[0].features > 0).sum(dim=0))
    else:
        assert out.fire_counts is None


def test_input_gradient_matches_when_inputs_require_it():
    sae = make_sae(seed=3)
    x = torch.randn(32, 24)
    ref = loss_and_grads(sae, x, "dense", x_grad=True)
    assert_same(*loss_and_grads(sae, x, "sparse", x_grad=True), *ref)
    assert_same(*loss_and_grads(sae, x, "auto", max_density=0.0, x_grad=True), *ref)


def test_no_active_latent_at_all():
    sae = make_sae(seed=4, threshold=100.0)
    x = torch.randn(16, 24)
    out, loss, grads = loss_and_grads(sae, x, "sparse")
    ref_out, ref_loss, ref_grads = loss_and_grads(sae, x, "dense")
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
    assert encode_decode(sae, x, torch.relu, "auto").sparse == (density <= AUTO_SPARSE["cpu"][1])  # the CPU's limit
    dense = encode_decode(sae, x, torch.relu, "dense")
    x_hat, f = sae(x)
    assert not dense.sparse and torch.equal(dense.x_hat, x_hat) and torch.equal(dense.features, f)
    with torch.no_grad():  # nothing to differentiate: the module's own forward
        assert not encode_decode(sae, x, torch.relu, "sparse").sparse
    with pytest.raises(ValueError, match="sparse kernel 'fast'"):
        encode_decode(sae, x, torch.relu, "fast")


def test_decode_outside_autograd_gathers_the_active_rows_and_equals_the_module_decode():
    """Resampling scores its inputs through `decode`: the same x̂ as `sae.decode`, from the gathered rows."""
    sae = make_sae(seed=8)
    with torch.no_grad():
        f = sae.encode(torch.randn(64, 24) * 2)
        density = float((f > 0).float().mean())
        assert 0.005 < density < AUTO_SPARSE["cpu"][1], density
        reference, empty = sae.decode(f), sae.decode(torch.zeros_like(f))
        torch.testing.assert_close(decode(sae, f, "dense"), reference, rtol=0, atol=0)
        sae.decode = lambda f: pytest.fail("the dense decode ran where the active rows should be gathered")
        for kernel in ("auto", "sparse"):
            torch.testing.assert_close(decode(sae, f, kernel), reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(decode(sae, torch.zeros_like(f), "sparse"), empty)
        with pytest.raises(ValueError, match="sparse kernel 'fast'"):
            decode(sae, f, "fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_auto_takes_the_sparse_products_for_wide_saes_with_the_dense_gradients():
    sae = make_sae(d=64, n=16_384, seed=7, threshold=5.0).to("cuda")  # ~0.1% of the pairs active
    x = (2 * torch.randn(256, 64)).to("cuda")
    out, loss, grads = loss_and_grads(sae, x, "auto", x_grad=True)
    assert out.sparse
    assert_same(out, loss, grads, *loss_and_grads(sae, x, "dense", x_grad=True))
    narrow = make_sae(d=64, n=4096, seed=7, threshold=5.0).to("cuda")
    assert not encode_decode(narrow, x, torch.relu, "auto").sparse


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
        sae.sparse_kernel = kernel
        for step, x in enumerate(batches):
            terms = sae.loss(x, 1e-2)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            sae.before_optimizer_step_()
            opt.step()
            sae.after_optimizer_step_()
            if step == 2:
                resample_features_(sae, opt, torch.tensor([1, 5, 9]), resample_inputs)
            paths.append(terms.sparse_path)
    assert paths == [False] * 5 + [True] * 5
    for (name, p_dense), p_sparse in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(p_sparse, p_dense, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    start = make_sae(seed=7)
    assert (dense.W_enc - start.W_enc).abs().max() > 1e-3  # the steps did move the weights


def train_through_the_module(cfg: SAEConfig, sae, batches) -> SAETrainingModule:
    module = SAETrainingModule(sae, cfg, log_every_n_steps=2)
    trainer = L.Trainer(
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return module


def test_the_trainer_runs_the_configured_kernel_and_logs_its_path():
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(64, 24, generator=generator) * 2 for _ in range(5)]
    results = {}
    for kernel in ("dense", "sparse", "auto"):
        cfg = SAEConfig(batch_size=64, tokens=64 * 5, lr=1e-2, l1_coefficient=1e-2, sparse_kernel=kernel)
        module = train_through_the_module(cfg, make_sae(seed=8), batches)
        results[kernel] = (module.sae, module.last_metrics["train/sparse_path"])
    assert results["dense"][1] == 0.0 and results["sparse"][1] == 1.0
    assert results["auto"][1] == 1.0  # ~4% of the latents fire: below the auto threshold
    for kernel in ("sparse", "auto"):
        for name, p in results[kernel][0].named_parameters():
            torch.testing.assert_close(p, getattr(results["dense"][0], name), rtol=1e-4, atol=1e-5)


def test_a_bad_kernel_setting_stops_at_start_up_naming_the_field():
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sae.sparse_kernel=sparse"])
        assert to_objects(cfg, TrainConfig).sae.sparse_kernel == "sparse"
        with pytest.raises(ConfigError, match=r"sae.sparse_kernel='fast': use auto, dense or sparse"):
            to_objects(compose(config_name="train", overrides=["sae.sparse_kernel=fast"]), TrainConfig)
    with pytest.raises(ConfigError, match="sae.sparse_kernel=sparse needs sae.dtype=float32"):
        SAEConfig(sparse_kernel="sparse", dtype="bf16")


@pytest.mark.parametrize("cls, settings", [(TopKSAE, TopKSettings), (BatchTopKSAE, BatchTopKSettings)], ids=["topk", "batchtopk"])
@pytest.mark.parametrize("dead_tokens", [10**9, 32], ids=["no_dead_latents", "auxk_on_dead_latents"])
def test_topk_architectures_get_the_same_gradients_from_the_sparse_kernel(cls, settings, dead_tokens):
    """Their selection is the active set; with dead latents the AuxK term needs every pre-activation: dense then.

    Each step runs both kernels from the same weights and state (firing counters, BatchTopK's threshold),
    then steps Adam on the dense gradients: Adam turns rounding-level differences in near-zero
    gradients into visible weight differences, so trajectories are compared for ReLU only.
    """
    torch.manual_seed(9)
    sae = cls(24, 96, settings(k=4, k_aux=8, dead_tokens=dead_tokens))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    paths = []
    for _ in range(4):
        x = torch.randn(32, 24, generator=generator) * 2
        state = {name: b.clone() for name, b in sae.named_buffers()}
        results = {}
        for kernel in ("sparse", "dense"):  # dense last: its state updates are the ones kept
            for name, b in sae.named_buffers():
                b.copy_(state[name])
            sae.sparse_kernel = kernel
            terms = sae.loss(x, 0.0)
            sae.observe_firing(terms.counted_fires(), len(x))  # the dead-latent counters, as the trainer updates them
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            sae.before_optimizer_step_()
            results[kernel] = (
                terms,
                {n: p.grad.clone() for n, p in sae.named_parameters()},
                {n: b.clone() for n, b in sae.named_buffers()},
            )
        (sparse, sparse_grads, sparse_state), (dense, dense_grads, dense_state) = results["sparse"], results["dense"]
        assert not dense.sparse_path
        paths.append((sparse.sparse_path, float(dense.auxiliary.detach()) > 0))
        torch.testing.assert_close(sparse.features, dense.features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse.total, dense.total, rtol=1e-5, atol=1e-6)
        for name in dense_grads:
            torch.testing.assert_close(
                sparse_grads[name], dense_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )
        for name in dense_state:
            torch.testing.assert_close(sparse_state[name], dense_state[name], msg=lambda m, name=name: f"{name}: {m}")
        opt.step()
        sae.after_optimizer_step_()
    # Sparse while no latent is dead; dense from the step the AuxK term has dead latents to use.
    assert paths == ([(True, False)] * 4 if dead_tokens > 10**6 else [(True, False)] + [(False, True)] * 3)
