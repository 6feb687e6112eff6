"""A training run around Lightning's fit: its start-up checks, its first SAE, and what it leaves on disk.

A run directory is claimed by the training identity of its config (sae/training/identity.py); it holds
`sae/` (weights + cfg.json), `checkpoints/last.ckpt` while unfinished, and `summary.json` when done.
`trainer.resume=false` starts a run over once (run_config.json records when); the same command again
resumes that fresh run, so a Slurm requeue of a run longer than the time limit still ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sae.architectures import SparseAutoencoder, build_sae
from sae.core.errors import ConfigError
from sae.core.files import atomic_write_json
from sae.formats.native import WEIGHTS
from sae.lm.bridge import check_context_length, hook_name
from sae.training.config import SAEConfig, TrainConfig
from sae.training.identity import (
    RUN_CONFIG,
    check_checkpoint,
    claim_run_dir,
    fresh_start,
    record_fresh_start,
    training_identity,
)

SUMMARY = "summary.json"


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def finished_summary(run_dir: Path) -> dict | None:
    """The summary of a run that already holds its trained SAE; None while it is unfinished."""
    summary = run_dir / SUMMARY
    if (run_dir / "sae" / WEIGHTS).exists() and summary.exists():
        return json.loads(summary.read_text())
    return None


def start_up_checks(cfg: TrainConfig, run_dir: Path, resolved: dict, writer: bool = True) -> Path | None:
    """Before any work: this directory is this config's, the context fits the model, and the
    checkpoint to resume from (returned, None to start fresh) is readable.

    `writer`: this process claims the directory and sets an old checkpoint aside (under DDP, global rank 0).
    The other ranks, started at the same time or later, only check, and reach the same decision.
    """
    last = last_checkpoint(run_dir)
    finished = finished_summary(run_dir) is not None
    has_progress = finished or last.exists()
    if writer or has_progress or (run_dir / RUN_CONFIG).exists():
        claim_run_dir(run_dir, training_identity(resolved), has_progress=has_progress)
    check_context_length(cfg.model, cfg.data.context_length)
    if finished:
        return None
    if not cfg.trainer.resume and not _keep_fresh_start(run_dir, last, writer):
        if writer:
            if last.exists():
                kept = _aside(last)
                last.replace(kept)  # kept, not deleted; and Lightning would otherwise write last-v1.ckpt beside it
                print(f"trainer.resume=false: starting over; the previous checkpoint is now {kept}")
            record_fresh_start(run_dir)
        return None
    if not last.exists():
        return None
    check_checkpoint(last)
    return last


def _keep_fresh_start(run_dir: Path, last: Path, writer: bool = True) -> bool:
    """trainer.resume=false starts a run over once: a rerun of the same command (a Slurm requeue, a restart after
    a kill) resumes the fresh run's own checkpoint, recorded as started over in run_config.json. A corrupt one
    is started over again. Another DDP rank, reading while rank 0 sets the old checkpoint aside, decides alike:
    either way there is no checkpoint of the fresh run's own to resume."""
    started = fresh_start(run_dir)
    if started is None or not last.exists():
        return started is not None
    try:
        check_checkpoint(last)
    except ConfigError:
        return False
    if writer:
        print(
            f"trainer.resume=false: this run already started over at {started} (run_config.json: fresh_start); "
            f"resuming its own checkpoint. To start over again, move {last.parent} away."
        )
    return True


def _aside(path: Path) -> Path:
    """`<name>.old`, or `<name>.old.N` when an earlier one is there: a kept checkpoint is never overwritten."""
    kept, n = path.with_name(path.name + ".old"), 1
    while kept.exists():
        kept, n = path.with_name(f"{path.name}.old.{n}"), n + 1
    return kept


def checkpoint_bytes(sae: SparseAutoencoder) -> int:
    """Disk a run needs: a checkpoint (the weights and Adam's two moments, float32) and the trained SAE."""
    params = sum(p.numel() for p in sae.parameters())
    return int(params * 4 * 4 * 1.1) + 2**20


def initial_sae(cfg: SAEConfig, sample: torch.Tensor) -> SparseAutoencoder:
    """The configured architecture, initialised as it defines, then its input scale and b_dec from a data sample."""
    d_in = sample.shape[1]
    sae = build_sae(cfg.architecture, d_in, d_in * cfg.expansion, cfg.architecture_settings())
    sae.initialise_from_data_(sample, cfg.scale_inputs, cfg.b_dec_init)
    return sae


def provenance(cfg: TrainConfig, resolved: dict) -> dict:
    """What cfg.json records beside the SAE's shape: the model and hook it reads, and the whole training config."""
    return {
        "model": cfg.model.name,
        "layer": cfg.model.layer,
        "hook": cfg.model.hook,
        "hook_name": hook_name(cfg.model),
        "train_config": resolved,
    }


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(run_dir / SUMMARY, summary)
