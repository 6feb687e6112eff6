"""Activations of the hooked layer: harvested from the model, cached on disk or streamed, batched for training."""
