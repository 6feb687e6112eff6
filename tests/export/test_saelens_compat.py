"""Exported SAEs loaded by the real SAELens (and sparsify) in their own virtual environment: their encode and
decode must match ours on the same inputs. SAELens pins TransformerLens 3, so it cannot live in this project's
venv; `bash scripts/setup_saelens.sh` (run by `scripts/setup.sh --test`) builds `.venv-saelens`. Without it the
tests skip, saying so, unless SAE_TESTS_REQUIRE names `saelens` (as CI does): then they fail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.runs import REPO
from support.saes import PROVENANCE, K, random_sae

from sae.export.write import export
from sae.formats.native import save_sae

SAELENS_PYTHON = Path(os.environ.get("SAELENS_PYTHON", REPO / ".venv-saelens" / "bin" / "python"))
BUILD = "bash scripts/setup_saelens.sh"


def foreign_python(module: str) -> Path:
    if not SAELENS_PYTHON.exists():
        pytest.skip(f"no SAELens environment at {SAELENS_PYTHON}: build it with `{BUILD}`")
    probe = subprocess.run([str(SAELENS_PYTHON), "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(
            f"{module} does not import in {SAELENS_PYTHON} ({probe.stderr.strip().splitlines()[-1:]}): rebuild it with `{BUILD}`"
        )
    return SAELENS_PYTHON


SAELENS_SNIPPET = """
import json, sys
import sae_lens, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE

sae = SAE.load_from_disk(sys.argv[1], device="cpu")
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    f = sae.encode(x)
    save_file({"f": f.contiguous(), "x_hat": sae.decode(f).contiguous(), "forward": sae(x).contiguous()}, sys.argv[3])
print(json.dumps({"version": sae_lens.__version__, "class": type(sae).__name__, "architecture": sae.cfg.architecture(),
                  "hook_name": sae.cfg.metadata.hook_name, "model_name": sae.cfg.metadata.model_name}))
"""

SPARSIFY_SNIPPET = """
import json, sys
import sparsify, torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder

sae = SparseCoder.load_from_disk(sys.argv[1], device="cpu")
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    top_acts, top_indices, _ = sae.encode(x)
    f = torch.zeros(x.shape[0], sae.num_latents).scatter(1, top_indices, top_acts)
    save_file({"f": f, "x_hat": sae.decode(top_acts, top_indices).contiguous(), "forward": sae(x).sae_out.contiguous()},
              sys.argv[3])
print(json.dumps({"version": sparsify.__version__, "class": type(sae).__name__, "k": sae.cfg.k}))
"""


def run_foreign(python: Path, snippet: str, export_dir: Path, x: torch.Tensor, tmp_path: Path) -> tuple[dict, dict]:
    save_file({"x": x.contiguous()}, tmp_path / "inputs.safetensors")
    proc = subprocess.run(
        [
            str(python),
            "-c",
            snippet,
            str(export_dir),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "outputs.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), load_file(tmp_path / "outputs.safetensors")


def exported_sae(tmp_path, arch="relu"):
    sae = random_sae(d_in=64, n=512, scale=2.5, arch=arch)
    save_sae(sae, tmp_path / "run" / "sae", PROVENANCE)
    torch.manual_seed(7)
    return sae, tmp_path / "run", torch.randn(300, 64) * 2


def assert_matches_ours(sae, x: torch.Tensor, theirs: dict) -> None:
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    fired = (f > 0).float().sum(1)
    assert fired.mean() > 2 and (fired < f.shape[1]).all()  # enough live features for the comparison to mean something
    torch.testing.assert_close(theirs["f"], f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["x_hat"], x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["forward"], x_hat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch,their_class,their_arch",
    [
        ("relu", "StandardSAE", "standard"),
        ("topk", "TopKSAE", "topk"),
        ("batchtopk", "JumpReLUSAE", "jumprelu"),
        ("jumprelu", "JumpReLUSAE", "jumprelu"),
        ("matryoshka", "JumpReLUSAE", "jumprelu"),
    ],
)
def test_saelens_loads_our_export_and_encodes_like_ours(tmp_path, arch, their_class, their_arch):
    python = foreign_python("sae_lens")
    sae, run_dir, x = exported_sae(tmp_path, arch)
    out = export(run_dir, "saelens", tmp_path / "saelens", sparsity=False)
    info, theirs = run_foreign(python, SAELENS_SNIPPET, out, x, tmp_path)
    assert (info["class"], info["architecture"]) == (their_class, their_arch)
    assert (info["model_name"], info["hook_name"]) == ("embedded:smollm2", "blocks.2.hook_mlp_out")
    assert_matches_ours(sae, x, theirs)


@pytest.mark.parametrize("arch,k", [("relu", 512), ("topk", K)])
def test_sparsify_loads_our_export_and_encodes_like_ours(tmp_path, arch, k):
    python = foreign_python("sparsify")
    sae, run_dir, x = exported_sae(tmp_path, arch)
    out = export(run_dir, "sparsify", tmp_path / "sparsify")
    info, theirs = run_foreign(python, SPARSIFY_SNIPPET, out, x, tmp_path)
    assert (info["class"], info["k"]) == ("SparseCoder", k)
    assert_matches_ours(sae, x, theirs)
