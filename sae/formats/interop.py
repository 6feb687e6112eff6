"""SAEs in other libraries' on-disk formats (SAELens, EleutherAI's sparsify), written and read back.

This project's SAE computes x̄ = x·s − b_dec, f = act(x̄ W_enc + b_enc), x̂ = (f W_dec + b_dec) / s.
Neither library has the input scale s, so it is folded into the weights: with W_enc' = s·W_enc,
W_dec' = W_dec / s and b_dec' = b_dec / s, (x − b_dec') W_enc' = x̄ W_enc and f W_dec' + b_dec' = x̂,
so the features and the reconstruction are unchanged (exactly, up to float rounding).

Each architecture says how the other libraries name it (`saelens_architecture`, `saelens_extra`,
`sparsify_k` in its own module under sae/architectures/).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae.architectures import ARCHITECTURES, SparseAutoencoder, architecture_of, build_sae
from sae.core.errors import ConfigError

NATIVE, SAELENS, SPARSIFY = "native", "saelens", "sparsify"
FOREIGN = (SAELENS, SPARSIFY)
CONFIG = "cfg.json"
WEIGHTS = {NATIVE: "sae.safetensors", SAELENS: "sae_weights.safetensors", SPARSIFY: "sae.safetensors"}
PACKAGED = "packaged"  # data.source of the corpora of sae/text/packaged.py, written as packaged:<name>
SPARSITY = "sparsity.safetensors"  # SAELens: {"sparsity": log10 feature density}
# The SAELens release whose `cfg.json` layout this writes (its 6.x layout: model and hook under "metadata");
# tests/test_saelens_compat.py loads the export with that release.
SAELENS_LAYOUT_VERSION = "6.54.12"

Tensors = dict[str, torch.Tensor]


def mapping_for(cfg: dict) -> type[SparseAutoencoder]:
    """The architecture class, which says how SAELens and sparsify name it."""
    arch = architecture_of(cfg)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"architecture {arch!r} is unknown here; known: {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


# ---------------------------------------------------------------------------------------------- detection


def detect_format(directory: str | Path) -> str | None:
    """`native`, `saelens` or `sparsify` for a directory holding an SAE; None when it holds none."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        return None
    if (directory / WEIGHTS[SAELENS]).is_file():
        return SAELENS
    if not (directory / WEIGHTS[NATIVE]).is_file():
        return None
    try:
        cfg = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return NATIVE  # this project's reader names the corrupt file
    if isinstance(cfg, dict) and "n_features" not in cfg and ("num_latents" in cfg or "expansion_factor" in cfg):
        return SPARSIFY
    return NATIVE  # this project's reader names whatever its cfg.json lacks


def weights_path(directory: str | Path) -> Path:
    """The weights file of an SAE directory in any known format."""
    fmt = detect_format(directory)
    if fmt is None:
        raise FileNotFoundError(f"no SAE in {directory}: expected cfg.json with sae.safetensors or sae_weights.safetensors.")
    return Path(directory) / WEIGHTS[fmt]


# ---------------------------------------------------------------------------------------------- export


def folded_tensors(state: Tensors) -> Tensors:
    """Our state dict with the input scale folded into the weights (see the module docstring)."""
    s = state["input_scale"].double()
    out = {k: v.detach().double() for k, v in state.items() if k != "input_scale"}
    out["W_enc"] = out["W_enc"] * s
    out["W_dec"] = out["W_dec"] / s
    out["b_dec"] = out["b_dec"] / s
    return {k: v.float().contiguous() for k, v in out.items()}


def _provenance(cfg: dict) -> dict:
    train = cfg.get("train_config") or {}
    data = train.get("data") or {}
    dataset = data.get("path") or (",".join(data["files"]) if data.get("files") else data.get("source"))
    if data.get("source") == PACKAGED:  # the corpus's name is what finds the text again
        dataset = f"{PACKAGED}:{data.get('name')}"
    return {
        "model_name": cfg.get("model"),
        "hook_name": cfg.get("hook_name"),
        "context_size": data.get("context_length"),
        "dataset_path": dataset,
    }


def to_saelens(state: Tensors, cfg: dict) -> tuple[dict, Tensors]:
    """SAELens's `cfg.json` dict and `sae_weights.safetensors` tensors for our SAE."""
    mapping = mapping_for(cfg)
    tensors = folded_tensors(state)
    extra_cfg, extra_tensors = mapping.saelens_extra(tensors, cfg)
    weights = {k: tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")} | extra_tensors
    prov = _provenance(cfg)
    metadata = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        **prov,
        "hook_head_index": None,
        "prepend_bos": True,  # every context starts with BOS; BOS positions were left out of training
        "trained_with": {
            "library": "sae-monosemanticity",
            "architecture": architecture_of(cfg),
            "input_scale_folded": float(state["input_scale"]),
        },
    }
    out = {
        "architecture": mapping.saelens_architecture,
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["n_features"]),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
        **extra_cfg,
        "metadata": metadata,
        # The same names at the top level, for readers of SAELens's pre-6 layout (SAEDashboard, Neuronpedia).
        "model_name": prov["model_name"],
        "hook_name": prov["hook_name"],
        "hook_layer": cfg.get("layer"),
    }
    return out, weights


def to_sparsify(state: Tensors, cfg: dict) -> tuple[dict, Tensors]:
    """sparsify's `cfg.json` dict and `sae.safetensors` tensors (`encoder.weight` is [n, d_in], like nn.Linear)."""
    mapping = mapping_for(cfg)
    if mapping.sparsify_k(cfg) is None:
        raise ConfigError(
            f"sparsify runs only TopK-style SAEs; a {architecture_of(cfg)!r} SAE has no exact equivalent "
            "there: export it with --format saelens."
        )
    tensors = folded_tensors(state)
    n, d = int(cfg["n_features"]), int(cfg["d_in"])
    out = {
        "activation": "topk",
        "expansion_factor": max(1, n // d),
        # False: the exported decoder carries the folded input scale, so fine-tuning must not renormalise it.
        "normalize_decoder": False,
        "num_latents": n,
        "k": mapping.sparsify_k(cfg),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d,
        # Not sparsify fields (its loader drops unknown keys): where the activations came from.
        **_provenance(cfg),
    }
    weights = {
        "encoder.weight": tensors["W_enc"].T.contiguous(),
        "encoder.bias": tensors["b_enc"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    return out, weights


# ---------------------------------------------------------------------------------------------- loading


def _hook_parts(hook_name: str | None) -> tuple[int | None, str | None]:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name or "")
    return (int(match.group(1)), match.group(2)) if match else (None, None)


def _run_config(model: str | None, layer: int | None, hook: str | None, dataset: str | None, context_size: int | None) -> dict:
    """The model and text settings that evaluate.py and the interp stage read from `train_config`, where known."""
    run: dict = {}
    if model and layer is not None:
        alias = model.split(":")[-1].split("/")[-1]
        run["model"] = {"name": model, "alias": alias, "layer": layer, "hook": hook}
    if dataset:
        if dataset == "wiki_offline":
            data = {"source": "wiki_offline", "alias": "wiki"}
        elif dataset.startswith(f"{PACKAGED}:"):
            name = dataset.removeprefix(f"{PACKAGED}:")
            data = {"source": PACKAGED, "alias": name, "name": name}
        else:
            data = {"source": "hf", "alias": dataset.split("/")[-1], "path": dataset}
        run["data"] = data | ({"context_length": int(context_size)} if context_size else {})
    return run


def _native_cfg(
    d_in: int,
    n: int,
    architecture: str,
    model: str | None,
    hook_name: str | None,
    fmt: str,
    directory: Path,
    dataset: str | None = None,
    context_size: int | None = None,
) -> dict:
    layer, hook = _hook_parts(hook_name)
    return {
        "d_in": d_in,
        "n_features": n,
        "architecture": architecture,
        "model": model,
        "layer": layer,
        "hook": hook,
        "hook_name": hook_name,
        "format": fmt,
        "source": str(directory),
        "train_config": _run_config(model, layer, hook, dataset, context_size),
    }


def _from_saelens(directory: Path) -> tuple[str, Tensors, dict]:
    cfg = json.loads((directory / CONFIG).read_text())
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture", "standard")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", False, None):
        raise ConfigError(
            f"{directory}: normalize_activations={norm!r} is applied by SAELens at run time; load it in "
            "SAELens and save it with the normalisation folded in (normalize_activations='none')."
        )
    tensors = {k: v.float() for k, v in load_file(directory / WEIGHTS[SAELENS]).items()}
    ours = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if arch not in ours or (arch == "topk" and cfg.get("rescale_acts_by_decoder_norm")):
        raise ConfigError(
            f"{directory}: SAELens architecture {arch!r} cannot be loaded here; supported: {sorted(ours)} "
            "(topk without rescale_acts_by_decoder_norm)."
        )
    state = {k: tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if not cfg.get("apply_b_dec_to_input", True):
        # f = σ(x W + b) = σ((x − b_dec) W + b + b_dec W): the same SAE with b_dec subtracted first.
        state["b_enc"] = state["b_enc"] + state["b_dec"] @ state["W_enc"]
    state["input_scale"] = torch.ones(())
    if arch == "jumprelu":
        state["log_threshold"] = tensors["threshold"].log()
    model = meta.get("model_name", cfg.get("model_name"))
    hook_name = meta.get("hook_name", cfg.get("hook_name"))
    d_in, n = state["W_enc"].shape
    native = _native_cfg(
        d_in,
        n,
        ours[arch],
        model,
        hook_name,
        SAELENS,
        directory,
        meta.get("dataset_path", cfg.get("dataset_path")),
        meta.get("context_size", cfg.get("context_size")),
    )
    native["k"] = int(cfg["k"]) if arch == "topk" else None
    return ours[arch], state, native


def _from_sparsify(directory: Path) -> tuple[str, Tensors, dict]:
    cfg = json.loads((directory / CONFIG).read_text())
    tensors = {k: v.float() for k, v in load_file(directory / WEIGHTS[SPARSIFY]).items()}
    if cfg.get("transcode") or cfg.get("skip_connection") or cfg.get("activation", "topk") != "topk":
        raise ConfigError(
            f"{directory}: only sparsify TopK autoencoders load here (not transcoders, skip connections or groupmax); cfg: {cfg}."
        )
    W_enc = tensors["encoder.weight"].T.contiguous()
    d_in, n = W_enc.shape
    arch = "relu" if int(cfg["k"]) >= n else "topk"  # TopK over all latents is ReLU
    state = {
        "W_enc": W_enc,
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
        "input_scale": torch.ones(()),
    }
    native = _native_cfg(
        d_in,
        n,
        arch,
        cfg.get("model_name"),
        cfg.get("hook_name"),
        SPARSIFY,
        directory,
        cfg.get("dataset_path"),
        cfg.get("context_size"),
    )
    native["k"] = int(cfg["k"]) if arch == "topk" else None
    return arch, state, native


READERS = {SAELENS: _from_saelens, SPARSIFY: _from_sparsify}


def load_foreign(directory: str | Path, device: str = "cpu"):
    """Load an SAE saved by SAELens or sparsify as this project's SAE; returns it with a cfg in our layout."""
    directory = Path(directory)
    fmt = detect_format(directory)
    if fmt not in READERS:
        raise ConfigError(f"{directory} is not an SAELens or sparsify SAE directory (found: {fmt}).")
    arch, state, cfg = READERS[fmt](directory)
    k = cfg.pop("k")
    sae = build_sae(arch, cfg["d_in"], cfg["n_features"], k=k)
    missing, unexpected = sae.load_state_dict(state, strict=False)
    buffers = {name for name, _ in sae.named_buffers()}
    if unexpected or set(missing) - buffers:  # only training-only state (dead-latent counters) may stay at its start
        raise ConfigError(f"{directory}: weights do not fit a {arch} SAE (missing {missing}, unexpected {unexpected}).")
    cfg["settings"] = dataclasses.asdict(sae.settings)
    return sae.to(device).eval(), cfg


def check_matches(sae_cfg: dict, model_name: str, hook_name: str) -> None:
    """Refuse an SAE trained on another model or hook than the one it is about to be run on."""
    where = sae_cfg.get("source") or "this SAE"
    if sae_cfg.get("model") is None or sae_cfg.get("hook_name") is None:
        raise ConfigError(
            f"{where} does not record its model and hook; pass them (model.name=... model.layer=... "
            "model.hook=...) and make sure they are the ones it was trained on."
        )
    if sae_cfg["model"] != model_name or sae_cfg["hook_name"] != hook_name:
        raise ConfigError(
            f"{where} was trained on model {sae_cfg['model']!r} at hook {sae_cfg['hook_name']!r}, not "
            f"{model_name!r} at {hook_name!r}: use an SAE for that model and hook, or those settings."
        )
