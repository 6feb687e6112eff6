"""The reconstruction score during training: spliced LM cross-entropy on a fixed held-out token set.

Runs every `every_n_steps` optimizer steps (0 = only when training ends). The model loads
lazily on first use, so runs that never evaluate never load it.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from sae.config import DataConfig, ModelConfig
from sae.evaluation import heldout_tokens, sae_reconstruction, spliced_loss
from sae.lm import bos_token_id, hook_name


class ReconstructionScoreCallback(L.Callback):
    def __init__(self, bridge: Callable[[], object], model_cfg: ModelConfig, data_cfg: DataConfig, n_tokens: int, every_n_steps: int):
        self.bridge = bridge
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.n_tokens, self.every_n_steps = n_tokens, every_n_steps
        self._tokens: torch.Tensor | None = None
        self.last: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step < trainer.max_steps:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module)

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        bridge = self.bridge()
        bos = bos_token_id(bridge)
        if self._tokens is None:
            self._tokens = heldout_tokens(bridge, self.data_cfg, self.n_tokens, bos)
        result = spliced_loss(bridge, hook_name(self.model_cfg), self._tokens, sae_reconstruction(pl_module.sae), bos)
        self.last = {f"eval/{k}": float(v) for k, v in result.as_dict().items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.last, step=trainer.global_step)
        return self.last

    def summary(self) -> dict[str, float]:
        return dict(self.last)
