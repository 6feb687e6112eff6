"""The experiment logger of every job: W&B (online when logged in, else offline) or CSV.

One place opens a run, logs to it and closes it. Numbers go to every logger; images, histograms and
tables only to W&B, which can show them (a CSV file keeps the numbers). A job that reuses its
directory reopens the same W&B run: its id is kept in the directory.
"""

from __future__ import annotations

import netrc
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from sae.core.checks import require

MODES = ("auto", "online", "offline", "disabled")


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
        require(self.kind in LOGGERS, f"logger.kind={self.kind!r}: use one of {', '.join(LOGGERS)}.")
        require(self.mode in MODES, f"logger.mode={self.mode!r}: use auto, online, offline or disabled.")


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


def _csv(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, job_type: str) -> Logger:
    return CSVLogger(save_dir=str(run_dir), name="csv", version="")


def _wandb(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, job_type: str) -> Logger:
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


LOGGERS: dict[str, Callable[[LoggerConfig, Path, str, dict, str], Logger]] = {"wandb": _wandb, "csv": _csv}


def build_logger(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, job_type: str = "train") -> Logger:
    """The configured logger for one job (`job_type`: train, eval, interp, rubric, sweep-report)."""
    return LOGGERS[cfg.kind](cfg, Path(run_dir), run_name, config, job_type)


def numbers_only(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries a logger can plot: ints and floats (not bools)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_results(
    logger: Logger,
    numbers: Mapping[str, float],
    step: int = 0,
    images: Optional[Mapping[str, Path]] = None,
    histograms: Optional[Mapping[str, Sequence[float]]] = None,
    tables: Optional[Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]] = None,
) -> None:
    """Numbers to any logger; images (PNG paths), histograms (values) and tables (columns, rows) to W&B too."""
    if not isinstance(logger, WandbLogger):
        logger.log_metrics(dict(numbers), step=step)
        return
    import wandb

    payload: dict[str, Any] = dict(numbers)
    payload.update({k: wandb.Image(str(p)) for k, p in (images or {}).items()})
    payload.update({k: wandb.Histogram(list(v), num_bins=64) for k, v in (histograms or {}).items()})
    payload.update({k: wandb.Table(columns=list(c), data=[list(r) for r in rows]) for k, (c, rows) in (tables or {}).items()})
    logger.log_metrics(payload, step=step)


def finish(logger: Logger, summary: Optional[Mapping[str, Any]] = None) -> None:
    """Close the job's run: W&B keeps `summary`'s numbers as the run's summary and ends the run (the next job of a
    sequential sweep, in the same process, opens its own); other loggers flush to disk."""
    if isinstance(logger, WandbLogger):
        if summary:
            logger.experiment.summary.update(numbers_only(summary))
        logger.experiment.finish()
    else:
        logger.save()
