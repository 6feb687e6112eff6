"""Language models through TransformerLens 4's `TransformerBridge`, and the hook an SAE reads.

`model.name` is a hub name, a local Hugging Face directory, or a packaged model ("embedded:smollm2",
sae/lm/embedded.py): whatever `TransformerBridge.boot_transformers` accepts once resolved.
"""

from __future__ import annotations

import torch

from sae.core.errors import ConfigError
from sae.lm.config import ModelConfig
from sae.lm.embedded import resolve_model_path


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_language_model(cfg: ModelConfig):
    """Boot the model as a TransformerBridge (eval mode, no grads)."""
    from transformer_lens.model_bridge import TransformerBridge  # seconds to import: only when a model is loaded

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
