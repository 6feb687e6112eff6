"""Typed Hydra configs: one dataclass per swappable part, so a bad value fails at start-up with its field name.

`register_configs()` stores them as schemas; `conf/*.yaml` fill them in. Range checks live in
`__post_init__`, which runs when `OmegaConf.to_object` builds the objects (see `to_objects`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    # "embedded:smollm2" (packaged, offline), a hub name ("distilgpt2", "gpt2"), or a local HF directory.
    name: str = MISSING
    alias: str = MISSING  # short name used in run directories, e.g. "smollm2"
    layer: int = MISSING
    # Hook point inside the block: "hook_mlp_out" (MLP output) or "mlp.hook_post" (MLP neurons after the nonlinearity).
    hook: str = "hook_mlp_out"
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        _require(self.layer >= 0, f"model.layer={self.layer} must be >= 0 (a block index).")
        _require(self.dtype in ("float32", "bfloat16"), f"model.dtype={self.dtype!r}: use float32 or bfloat16.")


@dataclass
class DataConfig:
    # "wiki_offline" (packaged Wikipedia intros), "hf" (a hub dataset), "local" (text/json/jsonl files).
    source: str = MISSING
    alias: str = MISSING  # short name used in run directories, e.g. "wiki"
    path: Optional[str] = None  # hub dataset name for "hf"
    name: Optional[str] = None  # hub dataset config name
    split: str = "train"
    files: list[str] = field(default_factory=list)  # for "local"
    format: str = "text"  # "text" | "json" (jsonl too) for "local"
    # Text files: what one document is, so that a document lands wholly on one side of the held-out
    # split: "paragraph" (blocks separated by blank lines) or "document" (a whole file).
    sample_by: str = "paragraph"
    text_column: str = "text"
    streaming: bool = True
    context_length: int = 128
    # Every `holdout_every`-th document is held out for evaluation and never trained on.
    holdout_every: int = 20

    def __post_init__(self) -> None:
        sources = ("wiki_offline", "hf", "local")
        _require(self.source in sources, f"data.source={self.source!r}: choose one of {sources}.")
        _require(self.context_length >= 2, f"data.context_length={self.context_length} must be >= 2 (BOS + a token).")
        _require(self.holdout_every >= 2, f"data.holdout_every={self.holdout_every} must be >= 2.")
        if self.source == "hf":
            _require(bool(self.path), "data.path is empty: name the hub dataset, e.g. data.path=monology/pile-uncopyrighted.")
        if self.source == "local":
            _require(bool(self.files), "data.files is empty: give the text or jsonl files, e.g. data.files=[corpus.txt].")
            _require(self.format in ("text", "json"), f"data.format={self.format!r}: use text or json.")
            _require(
                self.sample_by in ("paragraph", "document"), f"data.sample_by={self.sample_by!r}: use paragraph or document."
            )


@dataclass
class ActivationsConfig:
    # Cache harvested activations on disk and train from the cache (several shuffled passes if needed).
    # With cache=false, training streams fresh activations through the shuffle buffer instead.
    cache: bool = True
    cache_dir: str = "${oc.env:SAE_CACHE_DIR,${oc.env:HOME}/.cache/sae}/activations"
    n_tokens: int = 500_000  # tokens harvested into the cache
    shard_tokens: int = 131_072
    buffer_tokens: int = 65_536  # shuffle buffer size (tokens from many contexts mixed)
    harvest_batch_size: int = 32  # contexts per model forward
    dtype: str = "float16"  # storage dtype of the cache

    def __post_init__(self) -> None:
        _require(self.n_tokens > 0, f"activations.n_tokens={self.n_tokens} must be > 0.")
        _require(self.shard_tokens > 0, f"activations.shard_tokens={self.shard_tokens} must be > 0 (tokens per cache file).")
        _require(self.buffer_tokens > 0, f"activations.buffer_tokens={self.buffer_tokens} must be > 0.")
        _require(
            self.harvest_batch_size > 0,
            f"activations.harvest_batch_size={self.harvest_batch_size} must be > 0 (contexts per forward).",
        )
        _require(self.dtype in ("float16", "float32"), f"activations.dtype={self.dtype!r}: use float16 or float32.")


@dataclass
class ResampleConfig:
    enabled: bool = True
    # When to resample, in training tokens: the paper's steps 25k/50k/75k/100k at batch 8,192.
    at_tokens: list[int] = field(default_factory=lambda: [204_800_000, 409_600_000, 614_400_000, 819_200_000])
    # Dead = no fire in this many tokens (the paper: 12,500 steps at batch 8,192).
    dead_window_tokens: int = 102_400_000
    # Shrink `at_tokens` and the window in proportion when the run is shorter than the paper's ~8.2B tokens...
    scale_to_run: bool = True
    reference_tokens: int = 8_192_000_000
    # ...but never below the window in which a feature of density `healthy_density` stays silent with
    # probability at most `false_dead_probability`; events that cannot fit such a window move later or drop.
    healthy_density: float = 1e-5
    false_dead_probability: float = 0.05
    n_inputs: int = 819_200
    encoder_scale: float = 0.2

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), f"sae.resample.enabled={self.enabled!r} must be true or false.")
        _require(
            all(isinstance(t, int) and t > 0 for t in self.at_tokens),
            f"sae.resample.at_tokens={self.at_tokens} must be positive token counts.",
        )
        _require(
            isinstance(self.dead_window_tokens, int) and self.dead_window_tokens > 0,
            f"sae.resample.dead_window_tokens={self.dead_window_tokens} must be > 0 tokens.",
        )
        _require(isinstance(self.scale_to_run, bool), f"sae.resample.scale_to_run={self.scale_to_run!r} must be true or false.")
        _require(
            isinstance(self.reference_tokens, int) and self.reference_tokens > 0,
            f"sae.resample.reference_tokens={self.reference_tokens} must be > 0 tokens.",
        )
        _require(
            0 < self.healthy_density < 1, f"sae.resample.healthy_density={self.healthy_density} must be in (0, 1), e.g. 1e-5."
        )
        _require(
            0 < self.false_dead_probability < 1,
            f"sae.resample.false_dead_probability={self.false_dead_probability} must be in (0, 1), e.g. 0.05.",
        )
        _require(isinstance(self.n_inputs, int) and self.n_inputs > 0, f"sae.resample.n_inputs={self.n_inputs} must be > 0.")
        _require(self.encoder_scale > 0, f"sae.resample.encoder_scale={self.encoder_scale} must be > 0 (the paper: 0.2).")


@dataclass
class SAEConfig:
    # Readable name of the configuration (conf/sae/<recipe>.yaml), e.g. "anthropic_2023", "topk".
    recipe: str = "anthropic_2023"
    # The architecture (sae/architectures/): relu, topk, batchtopk, jumprelu.
    architecture: str = "relu"
    expansion: int = 8
    # λ of the sparsity penalty: L1 for relu, L0 for jumprelu; 0 for topk/batchtopk (sparsity is sae.k).
    l1_coefficient: float = 3e-4
    # Active latents per input (topk; on average per input for batchtopk); null for penalty architectures.
    k: Optional[int] = None
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    batch_size: int = 4096
    tokens: int = 2_000_000_000  # training token budget; steps = tokens // batch_size
    dtype: str = "float32"  # "float32" or "bf16" (bf16 autocast)
    # Training products over active latents only (sae/sparse.py): "auto" (per batch, by the active
    # fraction; dense on GPUs and under bf16), "dense", or "sparse" (always; float32 only).
    sparse_kernel: str = "auto"
    scale_inputs: bool = False  # scale inputs so that E||x|| = sqrt(d) (a fixed factor measured on a sample)
    b_dec_init: str = "geometric_median"  # pre-encoder bias at the start: "geometric_median", "mean" or "zeros"
    l1_warmup_fraction: float = 0.0  # λ ramps up linearly over this fraction of the steps
    lr_decay_fraction: float = 0.0  # lr decays linearly to 0 over this last fraction of the steps
    grad_clip: Optional[float] = None
    # The architecture's own settings: the fields of its Settings dataclass in sae/architectures/<name>.py.
    settings: dict[str, Any] = field(default_factory=dict)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        from sae.architectures import ARCHITECTURES

        _require(
            self.architecture in ARCHITECTURES,
            f"sae.architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}.",
        )
        arch = ARCHITECTURES[self.architecture]
        _require(
            1 <= self.expansion <= 1024, f"sae.expansion={self.expansion} must be between 1 and 1024 (the paper used 1x-256x)."
        )
        _require(self.l1_coefficient >= 0, f"sae.l1_coefficient={self.l1_coefficient} must be >= 0.")
        if arch.sparsity_knob == "k":
            _require(
                self.k is not None and self.k >= 1,
                f"sae.k={self.k}: {self.architecture} needs the number of active latents, e.g. sae.k=32.",
            )
            _require(
                self.l1_coefficient == 0,
                f"sae.l1_coefficient={self.l1_coefficient} has no effect on {self.architecture} "
                "(its sparsity is sae.k): set sae.l1_coefficient=0.",
            )
        else:
            _require(
                self.k is None,
                f"sae.k={self.k} has no effect on {self.architecture} (its sparsity is sae.l1_coefficient): set sae.k=null.",
            )
        _require(self.lr > 0, f"sae.lr={self.lr} must be > 0.")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"sae.betas={self.betas} must be two numbers in [0, 1)."
        )
        _require(self.batch_size > 0, f"sae.batch_size={self.batch_size} must be > 0.")
        _require(
            self.tokens >= self.batch_size,
            f"sae.tokens={self.tokens} is smaller than one batch (sae.batch_size={self.batch_size}): "
            "raise sae.tokens or lower sae.batch_size.",
        )
        _require(self.dtype in ("float32", "bf16"), f"sae.dtype={self.dtype!r}: use float32 or bf16.")
        _require(
            self.sparse_kernel in ("auto", "dense", "sparse"),
            f"sae.sparse_kernel={self.sparse_kernel!r}: use auto, dense or sparse.",
        )
        _require(
            self.sparse_kernel != "sparse" or self.dtype == "float32",
            f"sae.sparse_kernel=sparse needs sae.dtype=float32 (not {self.dtype!r}): use sae.sparse_kernel=auto.",
        )
        b_dec_inits = ("geometric_median", "mean", "zeros")
        _require(self.b_dec_init in b_dec_inits, f"sae.b_dec_init={self.b_dec_init!r}: use one of {', '.join(b_dec_inits)}.")
        _require(0 <= self.l1_warmup_fraction < 1, f"sae.l1_warmup_fraction={self.l1_warmup_fraction} must be in [0, 1).")
        _require(0 <= self.lr_decay_fraction <= 1, f"sae.lr_decay_fraction={self.lr_decay_fraction} must be in [0, 1].")
        _require(
            not self.resample.enabled or arch.supports_resampling,
            f"sae.resample.enabled=true: {self.architecture} does not use dead-neuron resampling "
            f"(its remedy for dead latents: {arch.dead_latent_remedy}); set sae.resample.enabled=false.",
        )
        self.architecture_settings()  # bad keys or values fail here, naming the field
        _require(
            self.grad_clip is None or self.grad_clip > 0, f"sae.grad_clip={self.grad_clip} must be > 0 (or null: no clipping)."
        )
        _require(0 <= self.seed < 2**32, f"sae.seed={self.seed} must be in [0, 2**32).")

    def architecture_settings(self) -> Any:
        """The typed settings object of `architecture` (with `k` where it is the sparsity knob)."""
        from sae.architectures import build_settings

        return build_settings(self.architecture, self.settings, self.k)

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: int = 1
    log_every_n_steps: int = 50
    # The density histogram and the dead/ultralow fractions are computed over this many steps.
    density_window_steps: int = 500
    checkpoint_every_n_steps: int = 500
    # Language-model CE evaluation (reconstruction score) every N steps; 0 = only at the end.
    eval_every_n_steps: int = 0
    eval_tokens: int = 4096
    threads: int = 0  # torch CPU threads; 0 = torch's default
    progress_bar: bool = True
    # Held-out activations for the end-of-run L0 and explained variance (cheap: the forward stops at the hook).
    heldout_tokens: int = 16_384
    # false: start over even when checkpoints/last.ckpt exists (kept as last.ckpt.old), e.g. when it is corrupt.
    resume: bool = True

    def __post_init__(self) -> None:
        _require(self.devices >= 1, f"trainer.devices={self.devices} must be >= 1.")
        _require(
            self.devices == 1,
            f"trainer.devices={self.devices}: training on several devices is not supported (every device would see the same "
            "batches); use trainer.devices=1 and run several SAEs side by side with --multirun instead.",
        )
        for name in ("log_every_n_steps", "density_window_steps", "checkpoint_every_n_steps"):
            _require(getattr(self, name) >= 1, f"trainer.{name}={getattr(self, name)} must be >= 1.")
        _require(self.threads >= 0, f"trainer.threads={self.threads} must be >= 0 (0 = torch's default).")
        _require(
            self.heldout_tokens >= 0,
            f"trainer.heldout_tokens={self.heldout_tokens} must be >= 0 (0 = no held-out L0 / explained variance).",
        )
        _require(
            self.eval_every_n_steps >= 0,
            f"trainer.eval_every_n_steps={self.eval_every_n_steps} must be >= 0 (0 = only at the end).",
        )
        _require(self.eval_tokens >= 0, f"trainer.eval_tokens={self.eval_tokens} must be >= 0 (0 = no reconstruction score).")


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # "wandb" | "csv"
    project: str = "sae"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # "online", "offline", "disabled", or "auto": online when logged in to W&B, else offline.
    mode: str = "auto"

    def __post_init__(self) -> None:
        _require(self.kind in ("wandb", "csv"), f"logger.kind={self.kind!r}: use wandb or csv.")
        _require(
            self.mode in ("auto", "online", "offline", "disabled"),
            f"logger.mode={self.mode!r}: use auto, online, offline or disabled.",
        )


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    sae: SAEConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = MISSING
    run_name: str = MISSING
    # Filled by `+sweep=NAME` (read by the sweep report). `sweep.grouped=true`: a multirun's runs that read the
    # same activations in the same order train as one job, each batch read or harvested once (sae/sweep_groups.py).
    sweep: Any = field(default_factory=lambda: {"grouped": False})


def _slug(value: str) -> str:
    return str(value).replace("/", "_").replace(":", "_")


def _run_name(*, _root_: DictConfig) -> str:
    from sae.run_identity import run_name

    return run_name(_root_)


def register_configs() -> None:
    """Schemas for Hydra's defaults lists and the resolvers that format run names (exact values)."""
    from sae.run_identity import number, tokens_label

    for name, fn in (("sci", number), ("si", tokens_label), ("slug", _slug), ("run_name", _run_name)):
        OmegaConf.register_new_resolver(name, fn, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="sae", name="sae_schema", node=SAEConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)


def to_objects(cfg: DictConfig, cls: type) -> Any:
    """Build the dataclass (running its checks); re-raise OmegaConf's wrapped error as our own message."""
    try:
        return OmegaConf.to_object(cfg) if OmegaConf.get_type(cfg) is cls else cls(**OmegaConf.to_object(cfg))
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf wraps __post_init__ errors
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        raise
