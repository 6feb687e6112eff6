"""Typed settings of the feature browser, so a bad value fails at start-up naming its field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from sae.core.checks import require
from sae.dashboard.guards import split_host

UNIT_KINDS = ("features", "neurons")


@dataclass
class DashboardConfig:
    # Which units get pages: "features" (the SAE's), "neurons" (the raw hook it reads), or both.
    units: list[str] = field(default_factory=lambda: ["features", "neurons"])
    # Held-out text: one model pass over `n_contexts` windows of `window` tokens after BOS.
    n_contexts: int = 2000
    window: int = 64
    batch_size: int = 16
    encode_batch_tokens: int = 4096  # tokens per SAE encode while streaming statistics
    n_top: int = 12  # top-activating contexts shown per unit
    display_tokens: int = 24  # tokens shown per context, ending shortly after its maximum
    n_quantiles: int = 5  # activation quantile bins sampled below the top
    per_quantile: int = 3
    histogram_bins: int = 32
    n_logits: int = 10  # promoted / suppressed tokens listed
    part_units: int = 512  # units per stored part (resume granularity) and per site chunk file
    # Feature ablation: the units ablated (null = every unit that fires), the contexts used for each.
    ablation_units: Optional[int] = 256
    ablation_contexts: int = 4
    ablation_tokens: int = 10  # tokens listed per direction
    # Pinned-feature sampling, precomputed for `steering_units` features (more on demand via the server).
    steering_units: int = 8
    steering_multiple: float = 5.0  # the clamp value as a multiple of the feature's max activation
    steering_prompts: list[str] = field(default_factory=lambda: ["The", "In the city of", "She said that"])
    steering_tokens: int = 16
    steering_temperature: float = 1.0
    # Blind rubric: units drawn per kind (features and neurons mixed in random order).
    blind_per_kind: int = 20
    host: str = "127.0.0.1"
    port: int = 8765
    # Other names the browser may use for the server ("name" or "name:port", e.g. the local end of an
    # SSH tunnel on another port); requests for any other Host are refused (DNS rebinding).
    allowed_hosts: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        units = [self.units] if isinstance(self.units, str) else list(self.units)
        require(bool(units) and all(u in UNIT_KINDS for u in units), f"dashboard.units={units}: choose from {UNIT_KINDS}.")
        self.units = units
        self.steering_prompts = list(self.steering_prompts)
        self.allowed_hosts = [self.allowed_hosts] if isinstance(self.allowed_hosts, str) else list(self.allowed_hosts)
        require(self.window >= 4, f"dashboard.window={self.window} must be >= 4.")
        for name in (
            "n_contexts",
            "batch_size",
            "encode_batch_tokens",
            "n_top",
            "display_tokens",
            "histogram_bins",
            "n_logits",
            "part_units",
            "ablation_contexts",
            "ablation_tokens",
            "steering_tokens",
            "blind_per_kind",
        ):
            require(getattr(self, name) >= 1, f"dashboard.{name}={getattr(self, name)} must be >= 1.")
        for name in ("n_quantiles", "per_quantile", "steering_units"):
            require(getattr(self, name) >= 0, f"dashboard.{name}={getattr(self, name)} must be >= 0.")
        require(
            self.ablation_units is None or self.ablation_units >= 0,
            f"dashboard.ablation_units={self.ablation_units} must be >= 0 or null (all).",
        )
        require(0 < self.steering_multiple <= 1000, f"dashboard.steering_multiple={self.steering_multiple} must be in (0, 1000].")
        require(
            self.steering_temperature >= 0,
            f"dashboard.steering_temperature={self.steering_temperature} must be >= 0 (0 = greedy).",
        )
        require(
            bool(self.steering_prompts) and all(isinstance(p, str) and p for p in self.steering_prompts),
            "dashboard.steering_prompts must be a non-empty list of non-empty strings.",
        )
        bad = [h for h in self.allowed_hosts if not isinstance(h, str) or split_host(h) is None]
        require(not bad, f"dashboard.allowed_hosts: {bad} are not host names or addresses (optionally with :port).")
        require(0 <= self.port <= 65535, f"dashboard.port={self.port} must be in 0..65535 (0 = any free port).")


def register_dashboard_configs() -> None:
    ConfigStore.instance().store(group="dashboard", name="dashboard_schema", node=DashboardConfig)
