"""The training settings (the `sae` and `trainer` groups) and the whole config of train.py.

`register_configs()` stores every group's schema for Hydra's defaults lists (conf/train.yaml), so a
bad value fails at start-up naming its field: range checks live in each dataclass's `__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from sae.activations.config import ActivationsConfig
from sae.architectures import ARCHITECTURES, build_settings
from sae.core.checks import require
from sae.core.tracking import LoggerConfig
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig
from sae.training.identity import number, run_name, tokens_label


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
        require(isinstance(self.enabled, bool), f"sae.resample.enabled={self.enabled!r} must be true or false.")
        require(
            all(isinstance(t, int) and t > 0 for t in self.at_tokens),
            f"sae.resample.at_tokens={self.at_tokens} must be positive token counts.",
        )
        require(
            isinstance(self.dead_window_tokens, int) and self.dead_window_tokens > 0,
            f"sae.resample.dead_window_tokens={self.dead_window_tokens} must be > 0 tokens.",
        )
        require(isinstance(self.scale_to_run, bool), f"sae.resample.scale_to_run={self.scale_to_run!r} must be true or false.")
        require(
            isinstance(self.reference_tokens, int) and self.reference_tokens > 0,
            f"sae.resample.reference_tokens={self.reference_tokens} must be > 0 tokens.",
        )
        require(
            0 < self.healthy_density < 1, f"sae.resample.healthy_density={self.healthy_density} must be in (0, 1), e.g. 1e-5."
        )
        require(
            0 < self.false_dead_probability < 1,
            f"sae.resample.false_dead_probability={self.false_dead_probability} must be in (0, 1), e.g. 0.05.",
        )
        require(isinstance(self.n_inputs, int) and self.n_inputs > 0, f"sae.resample.n_inputs={self.n_inputs} must be > 0.")
        require(self.encoder_scale > 0, f"sae.resample.encoder_scale={self.encoder_scale} must be > 0 (the paper: 0.2).")


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
        require(
            self.architecture in ARCHITECTURES,
            f"sae.architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}.",
        )
        arch = ARCHITECTURES[self.architecture]
        require(
            1 <= self.expansion <= 1024, f"sae.expansion={self.expansion} must be between 1 and 1024 (the paper used 1x-256x)."
        )
        require(self.l1_coefficient >= 0, f"sae.l1_coefficient={self.l1_coefficient} must be >= 0.")
        if arch.sparsity_knob == "k":
            require(
                self.k is not None and self.k >= 1,
                f"sae.k={self.k}: {self.architecture} needs the number of active latents, e.g. sae.k=32.",
            )
            require(
                self.l1_coefficient == 0,
                f"sae.l1_coefficient={self.l1_coefficient} has no effect on {self.architecture} "
                "(its sparsity is sae.k): set sae.l1_coefficient=0.",
            )
        else:
            require(
                self.k is None,
                f"sae.k={self.k} has no effect on {self.architecture} (its sparsity is sae.l1_coefficient): set sae.k=null.",
            )
        require(self.lr > 0, f"sae.lr={self.lr} must be > 0.")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"sae.betas={self.betas} must be two numbers in [0, 1)."
        )
        require(self.batch_size > 0, f"sae.batch_size={self.batch_size} must be > 0.")
        require(
            self.tokens >= self.batch_size,
            f"sae.tokens={self.tokens} is smaller than one batch (sae.batch_size={self.batch_size}): "
            "raise sae.tokens or lower sae.batch_size.",
        )
        require(self.dtype in ("float32", "bf16"), f"sae.dtype={self.dtype!r}: use float32 or bf16.")
        require(
            self.sparse_kernel in ("auto", "dense", "sparse"),
            f"sae.sparse_kernel={self.sparse_kernel!r}: use auto, dense or sparse.",
        )
        require(
            self.sparse_kernel != "sparse" or self.dtype == "float32",
            f"sae.sparse_kernel=sparse needs sae.dtype=float32 (not {self.dtype!r}): use sae.sparse_kernel=auto.",
        )
        b_dec_inits = ("geometric_median", "mean", "zeros")
        require(self.b_dec_init in b_dec_inits, f"sae.b_dec_init={self.b_dec_init!r}: use one of {', '.join(b_dec_inits)}.")
        require(0 <= self.l1_warmup_fraction < 1, f"sae.l1_warmup_fraction={self.l1_warmup_fraction} must be in [0, 1).")
        require(0 <= self.lr_decay_fraction <= 1, f"sae.lr_decay_fraction={self.lr_decay_fraction} must be in [0, 1].")
        require(
            not self.resample.enabled or arch.supports_resampling,
            f"sae.resample.enabled=true: {self.architecture} does not use dead-neuron resampling "
            f"(its remedy for dead latents: {arch.dead_latent_remedy}); set sae.resample.enabled=false.",
        )
        self.architecture_settings()  # bad keys or values fail here, naming the field
        require(
            self.grad_clip is None or self.grad_clip > 0, f"sae.grad_clip={self.grad_clip} must be > 0 (or null: no clipping)."
        )
        require(0 <= self.seed < 2**32, f"sae.seed={self.seed} must be in [0, 2**32).")

    def architecture_settings(self) -> Any:
        """The typed settings object of `architecture` (with `k` where it is the sparsity knob)."""
        return build_settings(self.architecture, self.settings, self.k)

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    # Processes (one per GPU) training one SAE together with DDP, on each of `num_nodes` machines; each gets
    # sae.batch_size / (devices × num_nodes) rows of every batch. Several nodes: through Slurm (hydra/launcher=slurm).
    devices: int = 1
    num_nodes: int = 1
    log_every_n_steps: int = 50
    # The density histogram and the dead/ultralow fractions are computed over this many steps.
    density_window_steps: int = 500
    # checkpoints/last.ckpt is written every N optimizer steps and every M minutes of training, whichever comes
    # first (a fast GPU run takes thousands of steps a minute: the clock is what bounds the work a failure loses).
    checkpoint_every_n_steps: int = 500
    checkpoint_every_minutes: float = 15.0  # 0: by steps only
    # Language-model CE evaluation (reconstruction score) every N steps; 0 = only at the end.
    eval_every_n_steps: int = 0
    eval_tokens: int = 4096
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # torch.set_float32_matmul_precision during training: "highest" (true float32), "high" (TF32 on NVIDIA
    # GPUs since Ampere: several times the float32 rate, ~1e-3 relative error per product), or "medium".
    # Harvesting always runs at "highest", so the activations and the cache do not depend on it.
    float32_matmul_precision: str = "highest"
    progress_bar: bool = True
    # Held-out activations for the end-of-run L0 and explained variance (cheap: the forward stops at the hook).
    heldout_tokens: int = 16_384
    # false: start over even when checkpoints/last.ckpt exists (kept as last.ckpt.old), e.g. when it is corrupt.
    # Once: run_config.json records the fresh start, and the same command again (a Slurm requeue) resumes it.
    resume: bool = True

    def __post_init__(self) -> None:
        require(self.devices >= 1, f"trainer.devices={self.devices} must be >= 1 (processes per node, one per GPU).")
        require(self.num_nodes >= 1, f"trainer.num_nodes={self.num_nodes} must be >= 1.")
        for name in ("log_every_n_steps", "density_window_steps", "checkpoint_every_n_steps"):
            require(getattr(self, name) >= 1, f"trainer.{name}={getattr(self, name)} must be >= 1.")
        require(
            self.checkpoint_every_minutes >= 0,
            f"trainer.checkpoint_every_minutes={self.checkpoint_every_minutes} must be >= 0 (0 = by steps only).",
        )
        require(self.threads >= 0, f"trainer.threads={self.threads} must be >= 0 (0 = torch's default).")
        require(
            self.float32_matmul_precision in ("highest", "high", "medium"),
            f"trainer.float32_matmul_precision={self.float32_matmul_precision!r}: use highest (float32), high (TF32) or medium.",
        )
        require(
            self.heldout_tokens >= 0,
            f"trainer.heldout_tokens={self.heldout_tokens} must be >= 0 (0 = no held-out L0 / explained variance).",
        )
        require(
            self.eval_every_n_steps >= 0,
            f"trainer.eval_every_n_steps={self.eval_every_n_steps} must be >= 0 (0 = only at the end).",
        )
        require(self.eval_tokens >= 0, f"trainer.eval_tokens={self.eval_tokens} must be >= 0 (0 = no reconstruction score).")

    @property
    def processes(self) -> int:
        """DDP ranks training the one SAE: devices per node × nodes."""
        return self.devices * self.num_nodes


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
    return run_name(_root_)


def _gpu_count() -> int:
    """GPUs this process sees: conf/hydra/launcher/local.yaml hands them all to its jobs."""
    return torch.cuda.device_count()


def register_configs() -> None:
    """Schemas for Hydra's defaults lists and the resolvers that format run names (exact values)."""
    resolvers = (("sci", number), ("si", tokens_label), ("slug", _slug), ("run_name", _run_name), ("sae_gpu_count", _gpu_count))
    for name, fn in resolvers:
        OmegaConf.register_new_resolver(name, fn, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="sae", name="sae_schema", node=SAEConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
