"""Evaluate a trained SAE.

    python evaluate.py sae_path=outputs/<model>/<data>/<run>            # stage=metrics (default)
    python evaluate.py sae_path=... stage=interp                        # automated interpretability (sae.interp)
    python evaluate.py sae_path=... stage=all metrics.ce_tokens=32768
    python evaluate.py sae_path=... stage=dashboard | serve | rubric_report   # feature browser (sae.dashboard)

The metrics stage writes `metrics.json` (reconstruction_score, kl_score, ce_*, l0, explained_variance,
mse, cosine_similarity, norm_ratio, dead_fraction, ultralow_fraction, decoder cosines of rare features
vs the rest) and PNG plots into `<training run dir>/eval/`, and logs them to the SAE's W&B project.
Each part is stored under `eval/parts/` keyed by its settings and the SAE's weights, so an
interrupted or repeated evaluation only computes what is missing (sae/evaluation/metrics_stage.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sae.core.checks import output_dir_problem, to_objects
from sae.core.errors import ConfigError, SAEFileError
from sae.core.files import atomic_write_json
from sae.core.locks import exclusive_dir
from sae.core.tracking import LoggerConfig, build_logger, finish, log_results, numbers_only
from sae.dashboard.config import register_dashboard_configs
from sae.dashboard.stages import run_stage
from sae.evaluation.config import EvaluateConfig, default_eval_dir, register_eval_configs
from sae.evaluation.metrics_stage import compute_metrics
from sae.formats.interop import FOREIGN, check_matches
from sae.formats.native import find_sae_dir, load_sae
from sae.formats.run_config import RunConfigs, run_configs
from sae.interp.backends import ExplainerConfig, explainer_config, register_explainer_configs
from sae.interp.config import InterpConfig, register_interp_configs
from sae.interp.pipeline import InterpFailed, run_interp
from sae.lm.bridge import hook_name, pick_device
from sae.training.config import register_configs

register_configs()
register_eval_configs()
register_interp_configs()
register_explainer_configs()
register_dashboard_configs()


@dataclasses.dataclass
class Job:
    """What every stage gets: the settings, the SAE (on its device) and the run it came from."""

    cfg: EvaluateConfig
    sae_dir: Path
    eval_dir: Path
    sae: object
    sae_cfg: dict
    run: RunConfigs


def metrics_stage(job: Job) -> dict:
    metrics, plots = compute_metrics(job.sae, job.sae_dir, job.eval_dir, job.run, job.cfg.metrics, job.cfg.seed)
    atomic_write_json(job.eval_dir / "metrics.json", metrics)
    log_to_run(job.run.logger, job.eval_dir, job.run.run_name, metrics, plots)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    return metrics


def log_to_run(logger_cfg: LoggerConfig, eval_dir: Path, run_name: str | None, metrics: dict, plots: dict[str, Path]) -> None:
    """Log to the SAE's W&B project (an `eval` job next to its training run), or to CSV."""
    run_name = run_name or Path(metrics["sae_path"]).parent.name
    logger = build_logger(logger_cfg, eval_dir, f"eval-{run_name}", {"sae": metrics["sae_path"]}, job_type="eval")
    numbers = {f"eval/{k}": v for k, v in numbers_only(metrics).items()}
    log_results(logger, numbers, images={f"eval/{k}": p for k, p in plots.items()})
    finish(logger, numbers)


def interp_settings(cfg: EvaluateConfig) -> tuple[InterpConfig, ExplainerConfig]:
    interp = cfg.interp
    if not isinstance(interp, InterpConfig):
        interp = InterpConfig(**(OmegaConf.to_container(interp) if isinstance(interp, DictConfig) else interp or {}))
    explainer = explainer_config(cfg.explainer)
    if cfg.units is not None:  # `units=neurons` is shorthand for interp.units=neurons
        interp = dataclasses.replace(interp, units=cfg.units)
    return interp, explainer


def check_interp(cfg: EvaluateConfig) -> None:
    interp_settings(cfg)[1].check_ready()


def interp_stage(job: Job) -> dict:
    interp, explainer = interp_settings(job.cfg)
    return run_interp(job.sae_dir, interp, explainer, job.eval_dir, logger=job.run.logger, sae=job.sae, sae_cfg=job.sae_cfg)


@dataclasses.dataclass(frozen=True)
class Stage:
    run: Callable[[Job], dict]
    check: Callable[[EvaluateConfig], None] | None = None  # start-up checks, before any stage does work


# One entry per stage; `all` runs the listed stages in order.
def dashboard_stage(name: str) -> Stage:
    """The feature browser (sae.dashboard.stages): dashboard | serve | rubric_report."""

    def run(job: Job) -> dict:
        return run_stage(name, job)

    return Stage(run)


STAGES: dict[str, Stage] = {
    "metrics": Stage(metrics_stage),
    "interp": Stage(interp_stage, check_interp),
    **{name: dashboard_stage(name) for name in ("dashboard", "serve", "rubric_report")},
}
COMPOSITE = {"all": ("metrics", "interp")}


def evaluate(cfg: EvaluateConfig, eval_dir: Path) -> dict:
    names = COMPOSITE.get(cfg.stage, (cfg.stage,))
    for name in names:
        if STAGES[name].check:
            STAGES[name].check(cfg)
    sae_dir = find_sae_dir(cfg.sae_path)
    sae, sae_cfg = load_sae(sae_dir, device=pick_device(cfg.device))
    overrides = {"model": cfg.model, "data": cfg.data, "activations": cfg.activations, "logger": cfg.logger}
    run = run_configs(sae_cfg, overrides)
    if sae_cfg.get("format") in FOREIGN:  # another library's SAE: it must be run on the model and hook it was trained on
        check_matches(sae_cfg, run.model.name, hook_name(run.model))
    job = Job(cfg, sae_dir, eval_dir, sae, sae_cfg, run)
    if names == ("serve",):  # reads what the other stages wrote
        return {"serve": STAGES["serve"].run(job)}
    with exclusive_dir(eval_dir, "this evaluation"):
        return {name: STAGES[name].run(job) for name in names}


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict | None:
    try:
        if OmegaConf.is_missing(cfg, "sae_path"):
            raise ConfigError("sae_path is missing: python evaluate.py sae_path=<training run dir or its sae/ dir>.")
        objects = to_objects(cfg, EvaluateConfig)
        return evaluate(objects, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, FileNotFoundError, SAEFileError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    except InterpFailed as exc:
        print(f"interp failed: {exc}", file=sys.stderr)
        sys.exit(1)


def quote_sae_path(arg: str) -> str:
    """Run directories are named like `..._l1=3e-4_lr=1e-4_...`; Hydra's override grammar needs such a value quoted."""
    key, sep, value = arg.partition("=")
    if key != "sae_path" or not sep or value[:1] in ("'", '"'):
        return arg
    quote = '"' if "'" in value else "'"
    return f"{key}={quote}{value}{quote}"


def sae_path_problem(args: list[str]) -> str | None:
    """A missing or wrong sae_path, found before Hydra starts (which would bury it in an interpolation error)."""
    if any(
        a
        in (
            "-h",
            "--help",
            "--hydra-help",
            "--info",
            "-c",
            "--cfg",
            "-cn",
            "--config-name",
            "-cp",
            "--config-path",
            "--config-dir",
            "-cd",
        )
        or a.startswith(("--cfg", "--info", "--config"))
        for a in args
    ):
        return None
    values = [a.partition("=")[2].strip("'\"") for a in args if a.startswith("sae_path=")]
    if not values:
        return "sae_path is missing: python evaluate.py sae_path=<training run dir or its sae/ dir>."
    value = values[-1]
    if "," in value or value.startswith(("glob(", "range(", "choice(")) or "${" in value:
        return None  # a sweep over paths: each run checks its own
    try:
        find_sae_dir(value)
    except FileNotFoundError as exc:
        return f"sae_path={value}: {exc}"
    return None


def eval_dir_problem(args: list[str]) -> str | None:
    """An evaluation directory (hydra.run.dir, by default <run>/eval) that cannot be created."""
    values = [a.partition("=")[2].strip("'\"") for a in args if a.startswith("sae_path=")]
    default = default_eval_dir(values[-1]) if values and "${" not in values[-1] else None
    return output_dir_problem(args, {"hydra.run.dir": default} if default else {})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    problem = sae_path_problem(sys.argv[1:]) or eval_dir_problem(sys.argv[1:])
    if problem:
        print(f"config error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *map(quote_sae_path, sys.argv[1:])]
    main()
