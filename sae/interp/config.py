"""Typed configs for automated interpretability, so a bad value fails at start-up naming its field.

`InterpConfig` says which units to score and how records are drawn and scored (defaults follow
the paper: 60 scored records x 9 tokens = 540 predictions per unit). `ExplainerConfig` says which
model explains and simulates: `token_pattern` (no LLM), `local` (Hugging Face model in-process)
or `openai` (any OpenAI-compatible endpoint). `register_interp_configs()` stores both schemas in
Hydra's ConfigStore for `conf/evaluate.yaml` and `conf/explainer/*.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from sae.config import ConfigError

UNIT_KINDS = ("features", "neurons")
SPLITS = ("top_and_random", "random_only", "quantiles")
EXPLAINER_KINDS = ("token_pattern", "local", "openai")
SIMULATOR_METHODS = ("auto", "logprobs", "integers")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class InterpConfig:
    # "features": the SAE's features; "neurons": the raw activations of the hook the SAE reads
    # (or of `neuron_hook`, e.g. "mlp.hook_post" for the MLP's own neurons).
    units: str = "features"
    neuron_hook: Optional[str] = None
    n_features: int = 8  # how many units, sampled at random among those that fire on held-out text
    features: Optional[list[int]] = None  # explicit unit indices instead of a sample
    seed: int = 0
    # Held-out text: `n_contexts` windows of `window` tokens (after BOS), one model pass for all units.
    n_contexts: int = 2000
    window: int = 64
    batch_size: int = 16
    # Records per unit: explanation uses `n_explain` top-activating windows (whole); scoring uses
    # `n_score_top` other top windows and `n_score_random` random windows, each cut to `score_tokens`.
    n_explain: int = 10
    n_score_top: int = 30
    n_score_random: int = 60
    score_tokens: int = 9
    n_quantiles: int = 5
    per_quantile: int = 4
    # top_and_random: the top records + as many random ones (30 + 30 = 60 records = 540 tokens);
    # random_only: all random records; quantiles: records drawn from activation quantiles.
    splits: list[str] = field(default_factory=lambda: ["top_and_random", "random_only"])
    # Also score the token-pattern baseline beside an LLM explainer (cheap, no LLM).
    baseline: bool = True
    # Score each unit's records with another unit's explanation too (the control every method needs).
    wrong_explanation_control: bool = True
    bootstrap_resamples: int = 2000

    def __post_init__(self) -> None:
        _require(self.units in UNIT_KINDS, f"interp.units={self.units!r}: choose one of {UNIT_KINDS}.")
        _require(self.n_features >= 1, f"interp.n_features={self.n_features} must be >= 1.")
        _require(self.window >= 2, f"interp.window={self.window} must be >= 2.")
        _require(
            1 <= self.score_tokens <= self.window,
            f"interp.score_tokens={self.score_tokens} must be in 1..interp.window ({self.window}).",
        )
        _require(
            self.n_contexts >= self.n_score_random,
            f"interp.n_contexts={self.n_contexts} must be >= interp.n_score_random={self.n_score_random}.",
        )
        _require(self.n_explain >= 1, f"interp.n_explain={self.n_explain} must be >= 1.")
        _require(self.n_score_top >= 0, f"interp.n_score_top={self.n_score_top} must be >= 0.")
        _require(self.n_score_random >= 0, f"interp.n_score_random={self.n_score_random} must be >= 0.")
        bad = [s for s in self.splits if s not in SPLITS]
        _require(not bad and bool(self.splits), f"interp.splits={list(self.splits)}: choose from {SPLITS}.")
        _require(self.n_contexts >= 1, f"interp.n_contexts={self.n_contexts} must be >= 1.")
        _require(self.batch_size >= 1, f"interp.batch_size={self.batch_size} must be >= 1 (contexts per forward).")
        _require(self.n_quantiles >= 1, f"interp.n_quantiles={self.n_quantiles} must be >= 1.")
        _require(self.per_quantile >= 1, f"interp.per_quantile={self.per_quantile} must be >= 1.")
        _require(self.bootstrap_resamples >= 1, f"interp.bootstrap_resamples={self.bootstrap_resamples} must be >= 1.")
        _require(0 <= self.seed < 2**32, f"interp.seed={self.seed} must be in [0, 2**32).")
        if self.features is not None:
            _require(all(int(f) >= 0 for f in self.features), f"interp.features={list(self.features)} must be unit indices >= 0.")


@dataclass
class ExplainerConfig:
    kind: str = "token_pattern"
    # local: a Hugging Face name or directory, or "embedded:smollm2" (packaged, offline).
    # openai: the model name the endpoint serves.
    model: str = "embedded:smollm2"
    base_url: Optional[str] = None  # openai: e.g. http://127.0.0.1:8000/v1 ; null = OpenAI's API
    # Name of the environment variable that holds the key (the key itself is never in a config).
    # null: the endpoint needs no key (a local llama.cpp or vLLM server).
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    max_concurrency: int = 4
    max_retries: int = 4  # the openai client's own exponential backoff on 429, 5xx, timeouts
    timeout_s: float = 120.0
    # logprobs: all-at-once expected value from prompt log-probabilities (completions with echo);
    # integers: the chat model rewrites each line with an integer; auto: logprobs when the endpoint
    # returns them, else integers. Each result records the method that produced it.
    simulator: str = "auto"
    top_logprobs: int = 15
    explanation_max_tokens: int = 60
    temperature: float = 0.0
    device: str = "auto"  # local
    dtype: str = "float32"  # local; bfloat16 is faster on CPUs with AVX-512 bf16 (never float16 on CPU)
    sim_batch_size: int = 8  # local: records per forward pass
    # token_pattern: patterns kept per explanation, and preceding tokens a pattern may require.
    max_patterns: int = 20
    context_tokens: int = 1

    def __post_init__(self) -> None:
        _require(self.kind in EXPLAINER_KINDS, f"explainer.kind={self.kind!r}: choose one of {EXPLAINER_KINDS}.")
        _require(
            self.simulator in SIMULATOR_METHODS, f"explainer.simulator={self.simulator!r}: choose one of {SIMULATOR_METHODS}."
        )
        _require(self.max_concurrency >= 1, f"explainer.max_concurrency={self.max_concurrency} must be >= 1.")
        _require(self.max_retries >= 0, f"explainer.max_retries={self.max_retries} must be >= 0.")
        _require(self.timeout_s > 0, f"explainer.timeout_s={self.timeout_s} must be > 0.")
        _require(1 <= self.top_logprobs <= 20, f"explainer.top_logprobs={self.top_logprobs} must be in 1..20.")
        _require(self.dtype in ("float32", "bfloat16"), f"explainer.dtype={self.dtype!r}: use float32 or bfloat16.")
        _require(self.context_tokens >= 0, f"explainer.context_tokens={self.context_tokens} must be >= 0.")
        _require(
            self.explanation_max_tokens >= 1, f"explainer.explanation_max_tokens={self.explanation_max_tokens} must be >= 1."
        )
        _require(self.temperature >= 0, f"explainer.temperature={self.temperature} must be >= 0.")
        _require(self.sim_batch_size >= 1, f"explainer.sim_batch_size={self.sim_batch_size} must be >= 1.")
        _require(self.max_patterns >= 1, f"explainer.max_patterns={self.max_patterns} must be >= 1.")
        if self.kind == "openai":
            _require(
                bool(self.model) and not self.model.startswith("embedded:"),
                f"explainer.model={self.model!r}: name the model the endpoint serves, e.g. explainer.model=gpt-4o-mini.",
            )
            if self.api_key_env is not None:
                _require(
                    self.api_key_env.isidentifier(),
                    "explainer.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key.",
                )

    @property
    def identity(self) -> str:
        """What distinguishes this explainer's results in the store (the key never enters it)."""
        if self.kind == "token_pattern":
            return f"token_pattern(max={self.max_patterns},ctx={self.context_tokens})"
        if self.kind == "local":
            return f"local:{self.model}:{self.dtype}"
        return f"openai:{self.base_url or 'api.openai.com'}:{self.model}"


def register_interp_configs() -> None:
    """Schemas for `interp:` and the `explainer` config group (conf/explainer/*.yaml)."""
    cs = ConfigStore.instance()
    cs.store(name="interp_schema", node=InterpConfig)
    cs.store(group="explainer", name="explainer_schema", node=ExplainerConfig)
