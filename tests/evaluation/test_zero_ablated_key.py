"""The stored zero-ablated losses of the spliced cross-entropy belong to the model's weights, not its name: a local
model directory whose weights change must not reuse the losses of its old weights."""

from __future__ import annotations

import torch

from sae.evaluation.metrics_stage import zero_ablated_path
from sae.lm.bridge import load_language_model
from sae.lm.config import ModelConfig


def test_zero_ablated_losses_are_keyed_by_the_model_weights(tmp_path):
    cfg = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=2)
    model = load_language_model(cfg)
    first = zero_ablated_path(tmp_path, cfg, model)
    assert zero_ablated_path(tmp_path, cfg, model) == first  # the same weights, the same stored losses
    weight = model.blocks[20].mlp.W_out
    original = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = original + 1.0  # a layer past the hook: only the losses after it change
    changed = zero_ablated_path(tmp_path, cfg, model)
    with torch.no_grad():
        weight[0, 0] = original
    assert changed != first and changed.parent == first.parent
    assert zero_ablated_path(tmp_path, cfg, model) == first
