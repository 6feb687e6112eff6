"""Language models through TransformerLens 4's `TransformerBridge`, and the hook an SAE reads.

`model.name` is a hub name, a local Hugging Face directory, or a packaged model ("embedded:smollm2",
sae/lm/embedded.py): whatever `TransformerBridge.boot_transformers` accepts once resolved.
"""

from __future__ import annotations

import torch

from sae.core.errors import ConfigError
from sae.lm.config import ModelConfig
from sae.lm.embedded import resolve_model_path

# model.dtype values; "auto" is the checkpoint's own dtype (model_dtype).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dtype(cfg: ModelConfig, device: str | None = None) -> torch.dtype:
    """The dtype the model runs in: `model.dtype`, or for "auto" the dtype its checkpoint was saved in.

    "auto" falls back to float32 when the checkpoint names no dtype, and runs a float16 checkpoint in float32
    on a CPU (half-precision matrix products there are slow, and some have no kernel).
    """
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    config = hf_config(cfg)
    declared = None if config is None else getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(declared).removeprefix("torch.") if declared is not None else "float32"
    dtype = DTYPES.get(name, torch.float32)
    if dtype == torch.float16 and pick_device(device or cfg.device) == "cpu":
        return torch.float32
    return dtype


def load_language_model(cfg: ModelConfig):
    """Boot the model as a TransformerBridge (eval mode, no grads)."""
    from transformer_lens.model_bridge import TransformerBridge  # seconds to import: only when a model is loaded

    path = resolve_model_path(cfg.name)
    device = pick_device(cfg.device)
    try:
        bridge = TransformerBridge.boot_transformers(path, device=device, dtype=model_dtype(cfg, device))
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


def hf_config(cfg: ModelConfig):
    """The model's Hugging Face config (no weights loaded); None if it cannot be read here."""
    from transformers import AutoConfig  # seconds to import: only when a config is read

    path = resolve_model_path(cfg.name)
    try:  # the local copy first: a run whose activations are cached may be offline
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception:
        try:
            return AutoConfig.from_pretrained(path)
        except Exception:  # not reachable now: the model load reports it when the model is needed
            return None


def _first_int(config, attrs: tuple[str, ...]) -> int | None:
    for attr in attrs:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_context(cfg: ModelConfig) -> int | None:
    """The model's maximum context from its Hugging Face config (no weights loaded); None if unknown here."""
    config = hf_config(cfg)
    if config is None:
        return None
    return _first_int(config, ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"))


def configured_hook_width(cfg: ModelConfig) -> int | None:
    """Width of the hooked activation from the model's config, before any weights load (for the run's plan);
    None for a hook or a config this does not know."""
    config = hf_config(cfg)
    if config is None:
        return None
    hidden = _first_int(config, ("hidden_size", "n_embd", "d_model"))
    if cfg.hook in ("hook_mlp_out", "hook_attn_out", "hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
        return hidden
    if cfg.hook in ("mlp.hook_post", "mlp.hook_pre"):
        neurons = _first_int(config, ("intermediate_size", "n_inner", "ffn_dim", "d_mlp"))
        return neurons or (4 * hidden if hidden and getattr(config, "model_type", "") == "gpt2" else None)
    return None


def check_context_length(cfg: ModelConfig, context_length: int) -> None:
    """Before harvesting: a context longer than the model takes would fail (or exhaust memory) mid-run."""
    limit = max_context(cfg)
    if limit is not None and context_length > limit:
        raise ConfigError(
            f"data.context_length={context_length} exceeds {cfg.name}'s maximum context of {limit} tokens: "
            f"use data.context_length<={limit}."
        )
