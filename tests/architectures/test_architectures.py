"""The architecture registry: both ReLU recipes train exactly as the pre-registry code did, saved SAEs
(old and new cfg.json) load as the right class, bad files and settings stop with one clear line."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file
from support.runs import REPO
from torch.utils.data import DataLoader

from sae.architectures import ARCHITECTURES, ReLUSAE
from sae.core.checks import to_objects
from sae.core.errors import ConfigError, SAEFileError
from sae.formats.native import load_sae, save_sae
from sae.training.config import SAEConfig, TrainConfig, register_configs
from sae.training.module import SAETrainingModule
from sae.training.run import initial_sae

register_configs()
D, EXPANSION, BATCH, STEPS = 8, 4, 32, 40


def compose_sae(*overrides: str) -> SAEConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"sae.batch_size={BATCH}", f"sae.tokens={BATCH * STEPS}", f"sae.expansion={EXPANSION}", *overrides],
        )
    return to_objects(cfg, TrainConfig).sae


def fixed_batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D, generator=g) * 2
    return [mean + torch.randn(BATCH, D, generator=g) * (1 + torch.arange(D) / D) for _ in range(STEPS)]


def train_new_path(cfg: SAEConfig, sae, batches) -> None:
    """Through the real LightningModule and Trainer, as train.py runs it."""
    module = SAETrainingModule(sae, cfg, log_every_n_steps=10_000)
    trainer = L.Trainer(
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        gradient_clip_val=cfg.grad_clip,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def train_old_recipe(
    params: dict[str, torch.Tensor],
    batches,
    *,
    l1,
    lr,
    betas,
    unit_norm,
    weighted_l1,
    sum_squared,
    clip,
    warmup_fraction,
    decay_fraction,
) -> dict[str, torch.Tensor]:
    """The training step as the code before the registry wrote it, in plain torch: one flag per recipe difference."""
    p = {k: v.clone().requires_grad_(k != "input_scale") for k, v in params.items()}
    trainable = [p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"]]
    opt = torch.optim.Adam(trainable, lr=lr, betas=betas)
    steps, s = len(batches), p["input_scale"]
    warmup, decay_start = int(warmup_fraction * steps), int((1 - decay_fraction) * steps)
    for step, x in enumerate(batches):
        lam = l1 * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * (1.0 if decay_fraction <= 0 or step < decay_start else (steps - step) / (steps - decay_start))
        f = torch.relu((x * s - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
        x_hat = (f @ p["W_dec"] + p["b_dec"]) / s
        err = ((x - x_hat) * s).pow(2)
        rec = err.sum(-1) if sum_squared else err.mean(-1)
        pen = (f * p["W_dec"].norm(dim=1)).sum(-1) if weighted_l1 else f.abs().sum(-1)
        opt.zero_grad()
        (rec.mean() + lam * pen.mean()).backward()
        with torch.no_grad():
            if unit_norm:
                d = p["W_dec"] / p["W_dec"].norm(dim=1, keepdim=True)
                p["W_dec"].grad -= (p["W_dec"].grad * d).sum(1, keepdim=True) * d
            if clip:
                torch.nn.utils.clip_grad_norm_(trainable, clip)
            opt.step()
            if unit_norm:
                p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
    return {k: v.detach() for k, v in p.items()}


@pytest.mark.parametrize(
    "recipe, flags",
    [
        (
            "anthropic_2023",
            {
                "l1": 5e-3,
                "lr": 1e-3,
                "betas": (0.9, 0.99),
                "unit_norm": True,
                "weighted_l1": False,
                "sum_squared": False,
                "clip": None,
                "warmup_fraction": 0.0,
                "decay_fraction": 0.0,
            },
        ),
        (
            "anthropic_2024",
            {
                "l1": 5.0,
                "lr": 5e-4,
                "betas": (0.9, 0.999),
                "unit_norm": False,
                "weighted_l1": True,
                "sum_squared": True,
                "clip": 1.0,
                "warmup_fraction": 0.05,
                "decay_fraction": 0.2,
            },
        ),
    ],
)
def test_relu_recipes_train_exactly_as_the_pre_registry_code(recipe, flags):
    overrides = [f"sae={recipe}", "sae.resample.enabled=false"]
    if recipe == "anthropic_2023":
        overrides += ["sae.l1_coefficient=5e-3", "sae.lr=1e-3"]  # the embedded default's tuning
    cfg = compose_sae(*overrides)
    assert cfg.architecture == "relu" and cfg.recipe == recipe
    batches = fixed_batches()
    torch.manual_seed(0)
    sae = initial_sae(cfg, torch.cat(batches[:4]))
    start = {k: v.clone() for k, v in sae.state_dict().items()}
    train_new_path(cfg, sae, batches)
    expected = train_old_recipe(start, batches, **flags)
    assert not torch.allclose(expected["W_enc"], start["W_enc"])  # it did train
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=2e-6, rtol=1e-5, msg=f"{recipe}: {name} differs")


def _old_style_sae_dir(tmp_path, sae: ReLUSAE):
    """What the code before the registry wrote: no architecture in cfg.json, float tensors only."""
    save_file({k: v.detach().float().contiguous() for k, v in sae.state_dict().items()}, tmp_path / "sae.safetensors")
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": sae.d_in,
                "n_features": sae.n_features,
                "model": "embedded:smollm2",
                "layer": 2,
                "hook": "hook_mlp_out",
                "hook_name": "blocks.2.hook_mlp_out",
            }
        )
    )
    return tmp_path


def test_an_sae_saved_before_architectures_were_recorded_loads_as_relu(tmp_path):
    torch.manual_seed(0)
    sae = ReLUSAE(D, 3 * D)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.input_scale.fill_(2.5)
    loaded, cfg = load_sae(_old_style_sae_dir(tmp_path, sae))
    assert type(loaded) is ReLUSAE and cfg["hook_name"] == "blocks.2.hook_mlp_out"
    x = torch.randn(16, D)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x)[0], sae(x)[0])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_saves_and_loads_as_itself(tmp_path, name):
    torch.manual_seed(0)
    cls = ARCHITECTURES[name]
    settings = {"k": 3} if cls.sparsity_knob == "k" else {}
    from sae.architectures import build_sae

    sae = build_sae(name, D, 4 * D, settings)
    with torch.no_grad():
        sae.b_enc.normal_()
    save_sae(sae, tmp_path, {"model": "m"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == name and cfg["d_in"] == D and cfg["n_features"] == 4 * D
    loaded, _ = load_sae(tmp_path)
    assert type(loaded) is cls and loaded.settings == sae.settings
    for key, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(16, D)
    torch.testing.assert_close(loaded.encode(x), sae.eval().encode(x))


def test_unknown_architecture_in_cfg_json_is_refused_by_name(tmp_path):
    _old_style_sae_dir(tmp_path, ReLUSAE(D, 2 * D))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEFileError, match=r"cfg.json names architecture 'gated'.*known: relu"):
        load_sae(tmp_path)


@pytest.mark.parametrize(
    "damage, file, words",
    [
        (lambda d: (d / "sae.safetensors").write_bytes((d / "sae.safetensors").read_bytes()[:40]), "sae.safetensors", "corrupt"),
        (lambda d: (d / "sae.safetensors").write_bytes(b"\x00" * 64), "sae.safetensors", "corrupt"),
        (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_feat'), "cfg.json", "not valid JSON"),
        (lambda d: (d / "cfg.json").write_text('{"model": "x"}'), "cfg.json", "lacks d_in, n_features"),
        (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_features": 99}'), "sae.safetensors", "does not hold a relu SAE"),
        (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_features": 16, "settings": {"bogus": 1}}'), "cfg.json", "bogus"),
    ],
)
def test_a_damaged_sae_gives_one_line_naming_the_file(tmp_path, damage, file, words):
    _old_style_sae_dir(tmp_path, ReLUSAE(D, 2 * D))
    damage(tmp_path)
    with pytest.raises(SAEFileError) as err:
        load_sae(tmp_path)
    message = str(err.value)
    assert str(tmp_path / file) in message and words in message and "\n" not in message


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["sae.architecture=gated"], ["sae.architecture='gated'", "relu"]),
        (["+sae.settings.bogus=1"], ["sae.settings", "bogus", "unit_norm_decoder"]),
        (["sae.settings.init_decoder_norm=-1"], ["sae.settings.init_decoder_norm=-1"]),
        (["sae.k=16"], ["sae.k=16", "sae.l1_coefficient"]),
        (["sae.b_dec_init=median"], ["sae.b_dec_init", "mean"]),
    ],
)
def test_bad_architecture_settings_stop_at_start_up_naming_the_field(overrides, words):
    with pytest.raises(ConfigError) as err:
        compose_sae(*overrides)
    for word in words:
        assert word in str(err.value)


# --- TopK, BatchTopK, JumpReLU on tiny tensors, against values worked out by hand -----------------


def _tiny(cls, settings):
    """d_in 2, 4 latents: pre-activations x·W_enc are easy to read off; W_dec rows are unit vectors."""
    sae = cls(2, 4, settings)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.5]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.6, 0.8]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_topk_keeps_the_k_largest_and_relus_them():
    from sae.architectures import TopKSAE, TopKSettings

    sae = _tiny(TopKSAE, TopKSettings(k=2))
    # x = [2, 1]: pre = [2, 1, -2, 1.5]; x = [-1, -1]: pre = [-1, -1, 1, -1] (a negative in the top 2 becomes 0)
    f = sae.encode(torch.tensor([[2.0, 1.0], [-1.0, -1.0]]))
    torch.testing.assert_close(f, torch.tensor([[2.0, 0.0, 0.0, 1.5], [0.0, 0.0, 1.0, 0.0]]))


def test_topk_loss_and_auxk_gradient_by_hand():
    from sae.architectures import TopKSAE, TopKSettings

    sae = _tiny(TopKSAE, TopKSettings(k=1, k_aux=1, aux_coefficient=1 / 32, dead_tokens=5))
    x = torch.tensor([[2.0, 0.5]])  # pre = [2, 0.5, -2, 1.25]: TopK-1 keeps latent 0, x̂ = [2, 0]
    alive = sae.loss(x, 0.0)  # nothing dead yet: no auxiliary loss
    torch.testing.assert_close(alive.reconstruction, torch.tensor(0.125))  # mean([0, 0.25])
    assert float(alive.auxiliary) == 0.0
    assert sae.tokens_since_fired.tolist() == [0, 0, 0, 0]  # the trainer counts, after the loss
    sae.observe_firing(alive.counted_fires(), len(x))
    assert sae.tokens_since_fired.tolist() == [0, 1, 1, 1]

    sae.zero_grad()
    sae.tokens_since_fired.copy_(torch.tensor([0, 5, 7, 0]))  # latents 1 and 2 dead
    terms = sae.loss(x, 0.0)
    # residual e = [0, 0.5]; top-1 dead pre-activation is latent 1 (0.5): ê = 0.5·[0.6, 0.8] = [0.3, 0.4]
    torch.testing.assert_close(terms.auxiliary, torch.tensor(0.05 / 32))  # α · mean([-0.3, 0.1]²)
    torch.testing.assert_close(terms.total, torch.tensor(0.125 + 0.05 / 32))
    terms.total.backward()
    # AuxK trains the chosen dead latent only: d/dW_dec[1] = α · (ê − e) · 0.5
    torch.testing.assert_close(sae.W_dec.grad[1], torch.tensor([0.3, -0.1]) * 0.5 / 32)
    assert sae.W_dec.grad[2].abs().max() == 0 and sae.W_dec.grad[3].abs().max() == 0
    sae.observe_firing(terms.counted_fires(), len(x))
    assert sae.tokens_since_fired.tolist() == [0, 6, 8, 1]


def test_batchtopk_selects_over_the_batch_and_learns_an_inference_threshold():
    from sae.architectures import BatchTopKSAE, BatchTopKSettings

    sae = _tiny(BatchTopKSAE, BatchTopKSettings(k=2, threshold_momentum=0.9))
    x = torch.tensor([[2.0, 1.0], [0.2, 0.1]])  # pre rows [2, 1, -2, 1.5] and [0.2, 0.1, -0.2, 0.15]
    assert float(sae.threshold) < 0
    torch.testing.assert_close(sae.encode(x[:1]), torch.tensor([[2.0, 0.0, 0.0, 1.5]]))  # no θ yet: per-input TopK
    terms = sae.loss(x, 0.0)
    # the 2·2 largest of all 8: 2, 1.5, 1, 0.2 -> three latents for the first input, one for the second
    torch.testing.assert_close(terms.features, torch.tensor([[2.0, 1.0, 0.0, 1.5], [0.2, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(sae.threshold, torch.tensor(0.2))  # first estimate: the smallest kept
    sae.loss(torch.tensor([[1.0, 1.0]]), 0.0)  # pre [1, 1, -1, 1]: keeps 1, 1 -> smallest 1
    torch.testing.assert_close(sae.threshold, torch.tensor(0.9 * 0.2 + 0.1 * 1.0))
    # inference: pre > θ = 0.28
    torch.testing.assert_close(sae.encode(torch.tensor([[0.3, 0.25]])), torch.tensor([[0.3, 0.0, 0.0, 0.0]]))


def test_jumprelu_forward_loss_and_threshold_gradients_by_hand():
    from sae.architectures import JumpReLUSAE, JumpReLUSettings
    from sae.architectures.jumprelu import JumpReLUFunction, StepFunction

    sae = _tiny(JumpReLUSAE, JumpReLUSettings(bandwidth=0.2))
    theta = torch.tensor([0.5, 0.5, 0.5, 0.8])
    with torch.no_grad():
        sae.log_threshold.copy_(theta.log())
    x = torch.tensor([[1.0, 0.55]])  # z = [1, 0.55, -1, 0.775]; only z > θ passes: latents 0, 1
    torch.testing.assert_close(sae.encode(x), torch.tensor([[1.0, 0.55, 0.0, 0.0]]))

    # Straight-through gradients, ε = 0.2: K((z-θ)/ε) = [0, 1, 0, 1] (|0.25| and |-0.125| < ½)
    z = torch.tensor([[1.0, 0.55, -1.0, 0.775]], requires_grad=True)
    t = theta.clone().requires_grad_()
    JumpReLUFunction.apply(z, t, 0.2).sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([0.0, -2.5, 0.0, -4.0]))  # −(θ/ε)K
    torch.testing.assert_close(z.grad, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))  # H(z − θ)
    z.grad, t.grad = None, None
    StepFunction.apply(z, t, 0.2).sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([0.0, -5.0, 0.0, -5.0]))  # −(1/ε)K
    torch.testing.assert_close(z.grad, torch.zeros(1, 4))  # the L0 term passes nothing to z

    # loss = Σ_d (x − x̂)² + λ·L0: x̂ = 1·[1, 0] + 0.55·[0.6, 0.8] = [1.33, 0.44]
    terms = sae.loss(x, 0.1)
    torch.testing.assert_close(terms.reconstruction, torch.tensor(0.33**2 + 0.11**2))
    torch.testing.assert_close(terms.sparsity, torch.tensor(2.0))
    torch.testing.assert_close(terms.total, torch.tensor(0.33**2 + 0.11**2 + 0.2))
    terms.total.backward()
    # d/d log θ = θ·d/dθ. From λ·L0: λ·θ·(−(1/ε)K) = [0, −0.25, 0, −0.4]. From the reconstruction, through
    # ∂f/∂θ = −(θ/ε)K, for both latents inside the kernel window — latent 3 too, though its f is 0:
    # ∂L/∂f_i = 2(x̂ − x)·W_dec[i] = 2·[0.33, −0.11]·[0.6, 0.8] = 0.22 for i = 1 and 3
    dl_df = 2 * (0.33 * 0.6 - 0.11 * 0.8)
    expected = torch.tensor([0.0, -0.25 + dl_df * -2.5 * 0.5, 0.0, -0.4 + dl_df * -4.0 * 0.8])
    torch.testing.assert_close(sae.log_threshold.grad, expected)


def test_architectures_without_resampling_refuse_it_at_start_up():
    for recipe in ("topk", "batchtopk", "jumprelu"):
        with pytest.raises(ConfigError) as err:
            compose_sae(f"sae={recipe}", "sae.resample.enabled=true")
        assert "sae.resample.enabled=true" in str(err.value) and "set sae.resample.enabled=false" in str(err.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["sae=topk", "sae.k=0"], ["sae.k=0"]),
        (["sae=topk", "sae.k=null"], ["sae.k=None", "sae.k=32"]),
        (["sae=topk", "sae.l1_coefficient=1e-3"], ["sae.l1_coefficient=0.001", "sae.k"]),
        (["sae=topk", "sae.settings.k_aux=0"], ["sae.settings.k_aux=0"]),
        (["sae=batchtopk", "sae.settings.threshold_momentum=1"], ["sae.settings.threshold_momentum=1"]),
        (["sae=jumprelu", "sae.settings.bandwidth=0"], ["sae.settings.bandwidth=0"]),
        (["sae=jumprelu", "sae.settings.bandwidth=wide"], ["sae.settings", "bandwidth"]),
    ],
)
def test_bad_new_architecture_settings_name_the_field(overrides, words):
    with pytest.raises(ConfigError) as err:
        compose_sae(*overrides)
    for word in words:
        assert word in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["topk", "batchtopk", "jumprelu"])
def test_new_architectures_train_through_train_py_and_load_as_themselves(tmp_path, activation_cache_dir, recipe):
    from support.runs import read_json, train_tiny

    steps = 30
    train_tiny(
        tmp_path,
        activation_cache_dir,
        f"sae={recipe}",
        f"sae.tokens={256 * steps}",
        "trainer.eval_tokens=128",
        "logger=csv",
        *(["sae.k=8", "sae.settings.dead_tokens=2560"] if recipe != "jumprelu" else []),
    )
    summary = read_json(tmp_path / "summary.json")
    assert summary["steps"] == steps and "resample/events" not in summary
    sae, cfg = load_sae(tmp_path)
    assert type(sae) is ARCHITECTURES[recipe] and cfg["architecture"] == recipe
    assert cfg["train_config"]["sae"]["recipe"] == recipe
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_features))  # unit-norm decoder rows
    x = torch.randn(64, sae.d_in) / float(sae.input_scale)
    l0 = (sae.encode(x) > 0).sum(dim=-1).float()
    if recipe == "topk":
        assert l0.max() <= 8 and summary["train/l0"] <= 8
        assert sae.tokens_since_fired.max() > 0  # the AuxK counters were saved with the weights
    if recipe == "batchtopk":
        assert float(sae.threshold) > 0  # the inference threshold was estimated and saved
        assert summary["train/l0"] == pytest.approx(8)  # k on average per input during training
    if recipe == "jumprelu":
        start = torch.full((sae.n_features,), cfg["train_config"]["sae"]["settings"]["initial_threshold"])
        assert not torch.allclose(sae.threshold, start)  # the thresholds learned
    assert math.isfinite(summary["eval/reconstruction_score"])


def test_architectures_sweep_composes_at_one_budget_with_each_configurations_sparsity():
    """`+sweep=architectures`: six configurations x five levels; a level picks λ or k from that configuration's
    ladder."""
    expected = {
        ("anthropic_2023", 0): 1e-2,
        ("anthropic_2023", 4): 2.5e-3,
        ("anthropic_2024", 0): 20.0,
        ("anthropic_2024", 4): 1.25,
        ("jumprelu", 0): 100.0,
        ("jumprelu", 4): 1.0,
        ("topk", 0): 8,
        ("topk", 4): 64,
        ("batchtopk", 0): 8,
        ("batchtopk", 4): 64,
        ("matryoshka", 0): 8,
        ("matryoshka", 4): 64,
    }
    for (recipe, level), value in expected.items():
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            raw = compose(config_name="train", overrides=["+sweep=architectures", f"sae={recipe}", f"sweep.level={level}"])
        cfg = to_objects(raw, TrainConfig).sae
        assert cfg.recipe == recipe and cfg.tokens == 1_000_000
        assert (cfg.k if ARCHITECTURES[cfg.architecture].sparsity_knob == "k" else cfg.l1_coefficient) == value, (recipe, level)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        swept = compose(config_name="train", overrides=["+sweep=architectures"], return_hydra_config=True).hydra.sweeper.params
    assert set(swept.sae.split(",")) == {recipe for recipe, _ in expected}  # every configuration is on the frontier
