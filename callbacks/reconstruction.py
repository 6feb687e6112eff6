"""Held-out quality during and at the end of training.

* The reconstruction score: spliced LM cross-entropy on a fixed held-out token set, every
  `every_n_steps` optimizer steps (0 = only when training ends).
* At the end: L0 and explained variance on held-out activations (`heldout_tokens` of them), so a
  sweep's frontier compares held-out sparsity with held-out reconstruction rather than the last
  training batch's.

The model loads lazily on first use, so runs that never evaluate never load it. The zero-ablated
run's losses do not depend on the SAE: they are computed once per run, and the runs of a grouped
sweep share them and the held-out activations through `shared(name, make)`. Under DDP, rank 0 alone
evaluates (the ranks hold the same SAE; the others never load the model): it runs no collective, so the
other ranks simply wait for it at the next training step.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from sae.activations.harvest import harvest
from sae.evaluation.spliced import sae_reconstruction, spliced_loss
from sae.evaluation.stats import activation_stats
from sae.lm.bridge import bos_token_id, hook_name
from sae.lm.config import ModelConfig
from sae.text.contexts import heldout_tokens
from sae.text.sources import DataConfig

HELDOUT_STATS = ("l0", "explained_variance", "mse", "cosine_similarity", "norm_ratio")


class ReconstructionScoreCallback(L.Callback):
    def __init__(
        self,
        bridge: Callable[[], object],
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        n_tokens: int,
        every_n_steps: int,
        heldout_stats_tokens: int = 0,
        harvest_batch_size: int = 32,
        shared: Callable[[str, Callable[[], object]], object] | None = None,
    ):
        self.bridge = bridge
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.n_tokens, self.every_n_steps = n_tokens, every_n_steps
        self.heldout_stats_tokens, self.harvest_batch_size = heldout_stats_tokens, harvest_batch_size
        self.shared = shared or (lambda name, make: make())
        self._tokens: torch.Tensor | None = None
        self._zero_ablated: dict[str, torch.Tensor] | None = None
        self.last: dict[str, float] = {}
        self.heldout: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step < trainer.max_steps and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.evaluate(trainer, pl_module)
        if self.heldout_stats_tokens:
            self.heldout = self.heldout_statistics(pl_module.sae)
            for logger in trainer.loggers:
                logger.log_metrics(self.heldout, step=trainer.global_step)

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        bridge = self.bridge()
        bos = bos_token_id(bridge)
        if self._tokens is None:
            self._tokens = heldout_tokens(bridge.tokenizer, self.data_cfg, self.n_tokens, bos)
            self._zero_ablated = self.shared("zero_ablated_losses", dict)
        reconstruct = sae_reconstruction(pl_module.sae)
        result = spliced_loss(bridge, hook_name(self.model_cfg), self._tokens, reconstruct, bos, zero_ablated=self._zero_ablated)
        self.last = {f"eval/{k}": float(v) for k, v in result.as_dict().items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.last, step=trainer.global_step)
        return self.last

    @torch.no_grad()
    def heldout_statistics(self, sae) -> dict[str, float]:
        """`eval/l0`, `eval/explained_variance`, ... on the first held-out activations (BOS dropped, as in training)."""
        was_training = sae.training
        sae.eval()
        chunks = self.shared("heldout_activations", self._heldout_activations)
        stats = activation_stats(sae, iter(chunks), self.heldout_stats_tokens).result()
        sae.train(was_training)
        out = {f"eval/{k}": float(stats[k]) for k in HELDOUT_STATS if k in stats}
        out["eval/heldout_tokens"] = float(stats["tokens"])
        return out

    def _heldout_activations(self) -> list[torch.Tensor]:
        chunks, n = [], 0
        for chunk in harvest(self.bridge(), self.model_cfg, self.data_cfg, self.harvest_batch_size, split="heldout"):
            chunks.append(chunk)
            n += len(chunk)
            if n >= self.heldout_stats_tokens:
                break
        return chunks

    def summary(self) -> dict[str, float]:
        return {**self.last, **self.heldout}
