"""`python -m sae.export`: SAELens and sparsify layouts, the input scale folded exactly, sparsity from its two
sources, loading the formats back, and `--push-to-hub` up to the upload call (the hub cannot be reached here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.disks import small_filesystem
from support.runs import REPO, read_json, run_script, script_env, train_tiny
from support.saes import PROVENANCE, assert_same_sae, random_sae

from sae.core.errors import ConfigError, SAEFileError
from sae.formats.interop import check_matches, detect_format, load_foreign, to_saelens, to_sparsify
from sae.formats.native import load_sae, save_sae

# (architecture, format, the architecture it loads back as): BatchTopK's and Matryoshka's inference rule is a JumpReLU.
ROUND_TRIPS = [
    ("relu", "saelens", "relu"),
    ("relu", "sparsify", "relu"),
    ("topk", "saelens", "topk"),
    ("topk", "sparsify", "topk"),
    ("batchtopk", "saelens", "jumprelu"),
    ("jumprelu", "saelens", "jumprelu"),
    ("matryoshka", "saelens", "jumprelu"),
]


@pytest.mark.parametrize("arch,fmt,loaded_arch", ROUND_TRIPS)
def test_export_folds_the_input_scale_and_loads_back_identical(tmp_path, arch, fmt, loaded_arch):
    from sae.export.write import export

    sae = random_sae(arch=arch)
    save_sae(sae, tmp_path / "run" / "sae", PROVENANCE)
    out = export(tmp_path / "run", fmt, tmp_path / "out", sparsity=False)
    assert detect_format(out) == fmt and detect_format(tmp_path / "run" / "sae") == "native"
    loaded, cfg = load_foreign(out)
    assert loaded.name == cfg["architecture"] == loaded_arch
    assert float(loaded.input_scale) == 1.0  # folded, not carried
    x = torch.randn(200, 24) * 2
    assert_same_sae(sae, loaded, x)
    fired = (sae.encode(x) > 0).float().sum(1)
    assert fired.mean() > 2 and (fired < 96).all()  # the comparison is over features that fire, and not all of them
    assert cfg["model"] == "embedded:smollm2" and cfg["hook_name"] == "blocks.2.hook_mlp_out"
    assert (cfg["layer"], cfg["hook"], cfg["format"]) == (2, "hook_mlp_out", fmt)


def test_saelens_layout_names_shapes_and_keys():
    sae = random_sae()
    cfg, tensors = to_saelens(sae.state_dict(), {**PROVENANCE, **sae.config_dict()})
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (24, 96),
        "b_enc": (96,),
        "W_dec": (96, 24),
        "b_dec": (24,),
    }
    assert all(v.dtype == torch.float32 for v in tensors.values())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == ("standard", 24, 96, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["model_name"] == cfg["model_name"] == "embedded:smollm2"
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.2.hook_mlp_out"
    assert cfg["metadata"]["trained_with"]["input_scale_folded"] == pytest.approx(3.7)
    # The fold by hand: SAELens computes ReLU((x − b_dec') W_enc' + b_enc), x̂ = f W_dec' + b_dec'.
    x = torch.randn(50, 24)
    f = torch.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"])
    torch.testing.assert_close(f, sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f @ tensors["W_dec"] + tensors["b_dec"], sae.decode(sae.encode(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk", "matryoshka"])
def test_sparsify_refuses_architectures_it_cannot_run(tmp_path, arch):
    sae = random_sae(arch=arch)
    with pytest.raises(ConfigError, match="export it with --format saelens"):
        to_sparsify(sae.state_dict(), {**PROVENANCE, **sae.config_dict()})


def test_sparsify_layout_is_topk_over_all_latents():
    sae = random_sae()
    cfg, tensors = to_sparsify(sae.state_dict(), {**PROVENANCE, **sae.config_dict()})
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "encoder.weight": (96, 24),
        "encoder.bias": (96,),
        "W_dec": (96, 24),
        "b_dec": (24,),
    }
    assert (cfg["activation"], cfg["k"], cfg["num_latents"], cfg["d_in"]) == ("topk", 96, 96, 24)
    # sparsify: top-k of ReLU(F.linear(x − b_dec, encoder.weight, encoder.bias)); with k = all latents, that is ReLU.
    x = torch.randn(50, 24)
    pre = torch.relu(torch.nn.functional.linear(x - tensors["b_dec"], tensors["encoder.weight"], tensors["encoder.bias"]))
    values, indices = pre.topk(cfg["k"], dim=-1)
    f = torch.zeros_like(pre).scatter(1, indices, values)
    torch.testing.assert_close(f, sae.encode(x), rtol=1e-5, atol=1e-5)


def test_saelens_sae_without_b_dec_on_the_input_loads_as_the_same_function(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    W_enc, b_enc, W_dec, b_dec = torch.randn(8, 32), torch.randn(32) * 0.2, torch.randn(32, 8), torch.randn(8)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": 8,
                "d_sae": 32,
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre"},
            }
        )
    )
    sae, cfg = load_foreign(tmp_path)
    x = torch.randn(40, 8)
    f = torch.relu(x @ W_enc + b_enc)
    torch.testing.assert_close(sae.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(f), f @ W_dec + b_dec, rtol=1e-5, atol=1e-5)
    assert (cfg["model"], cfg["layer"], cfg["hook"]) == ("gpt2", 3, "hook_resid_pre")
    assert cfg["train_config"] == {"model": {"name": "gpt2", "alias": "gpt2", "layer": 3, "hook": "hook_resid_pre"}}


def test_unsupported_foreign_saes_are_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)},
        tmp_path / "sae_weights.safetensors",
    )
    cfg = {"architecture": "standard", "d_in": 4, "d_sae": 8, "normalize_activations": "layer_norm"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="normalize_activations='layer_norm'"):
        load_foreign(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "none", "architecture": "gated"}))
    with pytest.raises(ConfigError, match="'gated'"):
        load_foreign(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "sae_weights.safetensors").rename(tmp_path / "sae.safetensors")
    assert detect_format(tmp_path) == "native"  # this project's reader then names what cfg.json lacks
    with pytest.raises(SAEFileError, match="lacks d_in, n_features"):
        load_sae(tmp_path)


def test_mismatched_model_or_hook_is_refused():
    cfg = {"model": "embedded:smollm2", "hook_name": "blocks.2.hook_mlp_out", "source": "/x/sae"}
    check_matches(cfg, "embedded:smollm2", "blocks.2.hook_mlp_out")
    with pytest.raises(ConfigError, match="trained on model 'embedded:smollm2' at hook 'blocks.2.hook_mlp_out', not 'gpt2'"):
        check_matches(cfg, "gpt2", "blocks.2.hook_mlp_out")
    with pytest.raises(ConfigError, match="blocks.3.hook_mlp_out"):
        check_matches(cfg, "embedded:smollm2", "blocks.3.hook_mlp_out")
    with pytest.raises(ConfigError, match="does not record its model and hook"):
        check_matches({"model": None, "hook_name": None}, "gpt2", "blocks.0.hook_mlp_out")


def test_export_never_replaces_a_folder_silently(tmp_path):
    from sae.export.write import MARKER, export

    save_sae(random_sae(), tmp_path / "sae", PROVENANCE)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # a folder no export wrote is never replaced, --overwrite or not
        with pytest.raises(ConfigError, match="no export wrote"):
            export(tmp_path / "sae", "saelens", tmp_path / "out", sparsity=False, overwrite=overwrite)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "out" / "keep.txt").unlink()
    export(tmp_path / "sae", "saelens", tmp_path / "out", sparsity=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "cfg.json", "sae_weights.safetensors"]
    with pytest.raises(ConfigError, match="pass --overwrite"):
        export(tmp_path / "sae", "sparsify", tmp_path / "out", sparsity=False)
    export(tmp_path / "sae", "sparsify", tmp_path / "out", sparsity=False, overwrite=True)  # a previous export: replaced
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "cfg.json", "sae.safetensors"]
    assert json.loads((tmp_path / "out" / MARKER).read_text())["format"] == "sparsify"
    (tmp_path / "out" / "notes.md").write_text("my notes")  # a previous export with something of the user's in it
    with pytest.raises(ConfigError, match="notes.md"):
        export(tmp_path / "sae", "saelens", tmp_path / "out", sparsity=False, overwrite=True)
    assert (tmp_path / "out" / "notes.md").read_text() == "my notes"
    assert not list(tmp_path.glob("out.tmp-*"))


def _export_cli(argv: list[str], capsys) -> str:
    from sae.export.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_export_overwrite_refuses_the_run_directory_and_a_file(tmp_path, capsys):
    """`--overwrite` with OUT = the run (or a folder holding it) would delete the run: refused, nothing touched."""
    run = tmp_path / "run"
    save_sae(random_sae(), run / "sae", PROVENANCE)
    (run / "run_config.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for out in (run, tmp_path, run / "sae"):
        err = _export_cli([str(run), "--format", "saelens", str(out), "--no-sparsity", "--overwrite"], capsys)
        assert "OUT=" in err and str(out) in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    (tmp_path / "a_file").write_text("x")
    err = _export_cli([str(run), "--format", "saelens", str(tmp_path / "a_file"), "--no-sparsity", "--overwrite"], capsys)
    assert "is a file" in err and (tmp_path / "a_file").read_text() == "x"
    err = _export_cli([str(run), "--format", "saelens", str(tmp_path / "a_file" / "out"), "--no-sparsity"], capsys)
    assert "is a file, not a directory" in err


def test_export_to_a_full_disk_is_refused_with_both_numbers(tmp_path, capsys):
    from sae.architectures import build_sae

    save_sae(build_sae("relu", 128, 4096), tmp_path / "sae", PROVENANCE)  # ~4 MB of weights
    with small_filesystem(tmp_path / "small_disk") as small_disk:
        err = _export_cli([str(tmp_path / "sae"), "--format", "saelens", str(small_disk / "out"), "--no-sparsity"], capsys)
        assert "MB needed" in err and "MB free" in err and "OUT" in err
        assert not list(small_disk.iterdir())  # nothing half-written


def test_push_to_hub_uploads_exactly_the_exported_folder_without_writing_the_token(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from sae.export.__main__ import main

    save_sae(random_sae(), tmp_path / "sae", PROVENANCE)
    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def fake_upload_folder(self, **kwargs):  # the real client's signature, called by keyword
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"] = {**kwargs, "files": {p.name: p.read_bytes() for p in folder.iterdir()}}

    token = "hf_exportTestTokenNeverWritten123"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    out = main(
        [str(tmp_path / "sae"), "--format", "saelens", str(tmp_path / "out"), "--no-sparsity", "--push-to-hub", "me/my-saes"]
    )
    assert calls["create_repo"] == {"repo_id": "me/my-saes", "repo_type": "model", "private": False, "exist_ok": True}
    up = calls["upload_folder"]
    assert (up["repo_id"], up["repo_type"], up["path_in_repo"]) == ("me/my-saes", "model", "blocks.2.hook_mlp_out")
    assert Path(up["folder_path"]) == out
    assert up["files"] == {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(up["files"]) - set(up["ignore_patterns"]) == {"cfg.json", "sae_weights.safetensors"}
    assert all(token.encode() not in data for data in up["files"].values())
    assert not (tmp_path / "hf_home").exists() or not any(
        token in p.read_text(errors="ignore") for p in (tmp_path / "hf_home").rglob("*") if p.is_file()
    )


def test_push_to_hub_without_a_token_stops_before_uploading(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from sae.export.__main__ import main

    save_sae(random_sae(), tmp_path / "sae", PROVENANCE)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: pytest.fail("uploaded without a token"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "sae"), "--format", "saelens", str(tmp_path / "out"), "--no-sparsity", "--push-to-hub", "me/x"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def run_2024(tmp_path_factory, activation_cache_dir):
    """The 2024 recipe scales inputs (input_scale ≠ 1), so the fold is exercised on a real SAE."""
    run_dir = tmp_path_factory.mktemp("export_run")
    train_tiny(
        run_dir,
        activation_cache_dir,
        "sae=anthropic_2024",
        "sae.tokens=25600",
        "logger=csv",
        "trainer.eval_tokens=0",
        "sae.dtype=float32",
    )
    return run_dir


def run_export(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "sae.export", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_export_of_a_trained_run_with_sparsity_from_cache_then_from_evaluation(run_2024, tmp_path):
    sae, _ = load_sae(run_2024)
    assert float(sae.input_scale) != 1.0
    first = run_export(run_2024, "--format", "saelens", tmp_path / "from_cache", "--density-tokens", 5000)
    assert "from the activation cache (5,000 training tokens)" in first.stdout
    from_cache = load_file(tmp_path / "from_cache" / "sparsity.safetensors")["sparsity"]
    assert from_cache.shape == (sae.n_features,) and from_cache.dtype == torch.float32
    assert (from_cache <= 0).all() and (from_cache > -10.01).all() and from_cache.max() > -4  # log10(density + 1e-10)

    # evaluate.py's density part, computed by its own code over the same 5,000 cached tokens, is preferred when present.
    run_script(
        "evaluate.py", [f"sae_path={run_2024}", "metrics.ce_tokens=0", "metrics.heldout_tokens=0", "metrics.density_tokens=5000"]
    )
    second = run_export(run_2024, "--format", "saelens", tmp_path / "from_eval")
    assert "from the evaluation density part (5,000 training tokens)" in second.stdout
    torch.testing.assert_close(load_file(tmp_path / "from_eval" / "sparsity.safetensors")["sparsity"], from_cache)

    cfg = read_json(tmp_path / "from_eval" / "cfg.json")
    assert cfg["metadata"]["context_size"] == 64 and cfg["metadata"]["dataset_path"] == "packaged:mixed"
    loaded, loaded_cfg = load_foreign(tmp_path / "from_eval")
    # What evaluate.py and the interp stage read to find the model and text: the run's own settings.
    trained = read_json(run_2024 / "sae" / "cfg.json")["train_config"]
    run_export(run_2024, "--format", "sparsify", tmp_path / "sparsify")
    for export_dir in ("from_eval", "sparsify"):
        run_cfg = load_foreign(tmp_path / export_dir)[1]["train_config"]
        assert run_cfg["model"] == {k: trained["model"][k] for k in ("name", "alias", "layer", "hook")}
        assert run_cfg["data"] == {k: trained["data"][k] for k in ("source", "alias", "name", "context_length")}
    from sae.export.write import run_activation_cache

    x = run_activation_cache(load_sae(run_2024)[1]).sample(500)
    assert_same_sae(sae, loaded, x)
