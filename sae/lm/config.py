"""Which language model and which of its hooks an SAE reads (conf/model/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from sae.core.checks import require


@dataclass
class ModelConfig:
    # "embedded:smollm2" (packaged, offline), a hub name ("distilgpt2", "gpt2"), or a local HF directory.
    name: str = MISSING
    alias: str = MISSING  # short name used in run directories, e.g. "smollm2"
    layer: int = MISSING
    # Hook point inside the block: "hook_mlp_out" (MLP output) or "mlp.hook_post" (MLP neurons after the nonlinearity).
    hook: str = "hook_mlp_out"
    # "float32", "bfloat16", "float16", or "auto": the checkpoint's own dtype (bfloat16 for a bf16 checkpoint).
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self.layer >= 0, f"model.layer={self.layer} must be >= 0 (a block index).")
        require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"model.dtype={self.dtype!r}: use auto (the checkpoint's dtype), float32, bfloat16 or float16.",
        )
