"""The Lightning logger a run writes to: W&B (online when logged in, else offline) or CSV."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path

from sae.config import LoggerConfig


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: LoggerConfig) -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if wandb_logged_in() else "offline"


def build_logger(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, job_type: str = "train"):
    """W&B resumes the same run when the directory is reused (its id is kept in the run directory)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    if cfg.kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    id_file = run_dir / f"wandb_{job_type}_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    return WandbLogger(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags),
        name=run_name,
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
        reinit="create_new",  # runs of a grouped sweep are open side by side in one process
        mode=wandb_mode(cfg),
        config=config,
        job_type=job_type,
    )
