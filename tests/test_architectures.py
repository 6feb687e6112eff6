"""The architecture registry: both ReLU recipes train exactly as the pre-registry code did, saved SAEs
(old and new cfg.json) load as the right class, bad files and settings stop with one clear line."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from conftest import REPO
from sae.architectures import ARCHITECTURES, ReLUSAE
from sae.config import ConfigError, SAEConfig, TrainConfig, register_configs, to_objects
from sae.io import SAEFileError, load_sae, save_sae
from sae.module import SAETrainingModule

register_configs()
D, EXPANSION, BATCH, STEPS = 8, 4, 32, 40


def compose_sae(*overrides: str) -> SAEConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sae.batch_size={BATCH}", f"sae.tokens={BATCH * STEPS}",
                                                      f"sae.expansion={EXPANSION}", *overrides])
    return to_objects(cfg, TrainConfig).sae


def fixed_batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D, generator=g) * 2
    return [mean + torch.randn(BATCH, D, generator=g) * (1 + torch.arange(D) / D) for _ in range(STEPS)]


def train_new_path(cfg: SAEConfig, sae, batches) -> None:
    """Through the real LightningModule and Trainer, as train.py runs it."""
    module = SAETrainingModule(sae, cfg, log_every_n_steps=10_000)
    trainer = L.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", gradient_clip_val=cfg.grad_clip)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def train_old_recipe(params: dict[str, torch.Tensor], batches, *, l1, lr, betas, unit_norm, weighted_l1, sum_squared,
                     clip, warmup_fraction, decay_fraction) -> dict[str, torch.Tensor]:
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


@pytest.mark.parametrize("recipe, flags", [
    ("anthropic_2023", dict(l1=5e-3, lr=1e-3, betas=(0.9, 0.99), unit_norm=True, weighted_l1=False, sum_squared=False,
                            clip=None, warmup_fraction=0.0, decay_fraction=0.0)),
    ("anthropic_2024", dict(l1=5.0, lr=5e-4, betas=(0.9, 0.999), unit_norm=False, weighted_l1=True, sum_squared=True,
                            clip=1.0, warmup_fraction=0.05, decay_fraction=0.2)),
])
def test_relu_recipes_train_exactly_as_the_pre_registry_code(recipe, flags):
    overrides = [f"sae={recipe}", "sae.resample.enabled=false"]
    if recipe == "anthropic_2023":
        overrides += ["sae.l1_coefficient=5e-3", "sae.lr=1e-3"]  # the embedded default's tuning
    cfg = compose_sae(*overrides)
    assert cfg.architecture == "relu" and cfg.recipe == recipe
    batches = fixed_batches()
    torch.manual_seed(0)
    from train import build_sae

    sae = build_sae(TrainConfig(sae=cfg), torch.cat(batches[:4]))
    start = {k: v.clone() for k, v in sae.state_dict().items()}
    train_new_path(cfg, sae, batches)
    expected = train_old_recipe(start, batches, **flags)
    assert not torch.allclose(expected["W_enc"], start["W_enc"])  # it did train
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=2e-6, rtol=1e-5, msg=f"{recipe}: {name} differs")


def _old_style_sae_dir(tmp_path, sae: ReLUSAE):
    """What the code before the registry wrote: no architecture in cfg.json, float tensors only."""
    save_file({k: v.detach().float().contiguous() for k, v in sae.state_dict().items()}, tmp_path / "sae.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": sae.d_in, "n_features": sae.n_features, "model": "embedded:smollm2",
                                                   "layer": 2, "hook": "hook_mlp_out", "hook_name": "blocks.2.hook_mlp_out"}))
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


@pytest.mark.parametrize("damage, file, words", [
    (lambda d: (d / "sae.safetensors").write_bytes((d / "sae.safetensors").read_bytes()[:40]), "sae.safetensors", "corrupt"),
    (lambda d: (d / "sae.safetensors").write_bytes(b"\x00" * 64), "sae.safetensors", "corrupt"),
    (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_feat'), "cfg.json", "not valid JSON"),
    (lambda d: (d / "cfg.json").write_text('{"model": "x"}'), "cfg.json", "lacks d_in, n_features"),
    (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_features": 99}'), "sae.safetensors", "does not hold a relu SAE"),
    (lambda d: (d / "cfg.json").write_text('{"d_in": 8, "n_features": 16, "settings": {"bogus": 1}}'), "cfg.json", "bogus"),
])
def test_a_damaged_sae_gives_one_line_naming_the_file(tmp_path, damage, file, words):
    _old_style_sae_dir(tmp_path, ReLUSAE(D, 2 * D))
    damage(tmp_path)
    with pytest.raises(SAEFileError) as err:
        load_sae(tmp_path)
    message = str(err.value)
    assert str(tmp_path / file) in message and words in message and "\n" not in message


@pytest.mark.parametrize("overrides, words", [
    (["sae.architecture=gated"], ["sae.architecture='gated'", "relu"]),
    (["+sae.settings.bogus=1"], ["sae.settings", "bogus", "unit_norm_decoder"]),
    (["sae.settings.init_decoder_norm=-1"], ["sae.settings.init_decoder_norm=-1"]),
    (["sae.k=16"], ["sae.k=16", "sae.l1_coefficient"]),
    (["sae.b_dec_init=median"], ["sae.b_dec_init", "mean"]),
])
def test_bad_architecture_settings_stop_at_start_up_naming_the_field(overrides, words):
    with pytest.raises(ConfigError) as err:
        compose_sae(*overrides)
    for word in words:
        assert word in str(err.value)
