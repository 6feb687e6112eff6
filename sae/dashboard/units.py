"""How one kind of unit is read from, and written back into, the hooked activation.

Features are read with `sae.encode` and written back through `sae.decode` (the spliced
reconstruction); neurons are the hook's own coordinates. Only `encode`, `decode` and the decoder
directions are used, so any SAE architecture with those works.
"""

from __future__ import annotations

from typing import Optional

import torch


class UnitSpace:
    def __init__(self, kind: str, sae=None, width: Optional[int] = None):
        if kind == "features" and sae is None:
            raise ValueError("units=features needs an SAE.")
        self.kind, self.sae = kind, sae
        self.n_units = sae.n_features if kind == "features" else int(width)

    def _param(self) -> torch.Tensor:
        return self.sae.W_dec

    @torch.no_grad()
    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Hook activations [..., d] -> unit activations [..., U] (float32, on x's device)."""
        if self.kind == "neurons":
            return x.float()
        p = self._param()
        return self.sae.encode(x.to(p.device, p.dtype)).float().to(x.device)

    @torch.no_grad()
    def write(self, x: torch.Tensor, unit: Optional[int] = None, value=None) -> torch.Tensor:
        """The activation to splice in: features -> the reconstruction, with `unit` set to `value`
        (0 ablates it, a large value pins it); neurons -> x with that coordinate set."""
        if self.kind == "neurons":
            out = x.clone()
            if unit is not None:
                out[..., unit] = value
            return out
        p = self._param()
        f = self.sae.encode(x.to(p.device, p.dtype))
        if unit is not None:
            f[..., unit] = value
        return self.sae.decode(f).to(x.device, x.dtype)

    @torch.no_grad()
    def directions(self, units: list[int], d_model: int) -> Optional[torch.Tensor]:
        """What one unit of activation adds to the hooked activation: decode(e_u) - decode(0) for a
        feature (its decoder row in the model's units), the basis vector for a neuron. None when the
        hooked activation is not d_model wide (it cannot be the residual stream's space)."""
        if self.kind == "neurons":
            if self.n_units != d_model:
                return None
            return torch.eye(d_model)[units]
        p = self._param()
        if p.shape[-1] != d_model:
            return None
        basis = torch.zeros(len(units), self.n_units, device=p.device, dtype=p.dtype)
        basis[torch.arange(len(units)), torch.tensor(units)] = 1.0
        zero = self.sae.decode(torch.zeros(1, self.n_units, device=p.device, dtype=p.dtype))
        return (self.sae.decode(basis) - zero).float().cpu()
