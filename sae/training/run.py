"""A training run around Lightning's fit: its start-up checks, its first SAE, and what it leaves on disk.

A run directory is claimed by the training identity of its config (sae/training/identity.py); it holds
`sae/` (weights + cfg.json), `checkpoints/last.ckpt` while unfinished, and `summary.json` when done.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sae.architectures import SparseAutoencoder, build_sae
from sae.core.files import atomic_write_json
from sae.formats.native import WEIGHTS
from sae.lm.bridge import check_context_length, hook_name
from sae.training.config import SAEConfig, TrainConfig
from sae.training.identity import RUN_CONFIG, check_checkpoint, claim_run_dir, training_identity

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
    if not last.exists() or finished:
        return None
    if not cfg.trainer.resume:
        if writer:
            kept = last.with_name(last.name + ".old")
            last.replace(kept)  # kept, not deleted; and Lightning would otherwise write last-v1.ckpt beside it
            print(f"trainer.resume=false: starting over; the previous checkpoint is now {kept}")
        return None
    check_checkpoint(last)
    return last


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
