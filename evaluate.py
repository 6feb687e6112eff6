"""Evaluate a trained SAE.

    python evaluate.py sae_path=outputs/<model>/<data>/<run>            # stage=metrics (default)
    python evaluate.py sae_path=... stage=interp                        # automated interpretability (sae.interp)
    python evaluate.py sae_path=... stage=all metrics.ce_tokens=32768
    python evaluate.py sae_path=... stage=dashboard | serve | rubric_report   # feature browser (sae.dashboard)
    python evaluate.py sae_path=... eval_corpora=[wiki,mixed,shakespeare]     # held-out metrics on other text too
    python evaluate.py sweep_dir=multirun/<name> stage=all              # every finished SAE of a sweep, one job

The metrics stage writes `metrics.json` (reconstruction_score, kl_score, ce_*, l0, explained_variance,
mse, cosine_similarity, norm_ratio, dead_fraction, ultralow_fraction, decoder cosines of rare features
vs the rest) and PNG plots into `<training run dir>/eval/`, and logs them to the SAE's W&B project.
Each part is stored under `eval/parts/` keyed by its settings and the SAE's weights, so an
interrupted or repeated evaluation only computes what is missing (sae/evaluation/metrics_stage.py).

`eval_corpora` names conf/data entries (or their aliases) to evaluate on besides the training data: the
held-out metrics of each (reconstruction and KL scores, L0, explained variance, CE clean / zero-ablated /
reconstructed) go to `eval/metrics_by_corpus.json` and `.md`, each corpus's parts stored apart.

`sweep_dir` evaluates every finished SAE of a sweep directory in one job, sharing the language model,
the records' held-out pass and the zero-ablated losses, with one unit-sampling protocol so the SAEs'
interpretability scores compare (sae/sweeps/evaluation.py); a rerun skips the SAEs already done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sae.core.checks import output_dir_problem, to_objects
from sae.core.errors import ConfigError, SAEFileError
from sae.core.files import atomic_write_json, atomic_write_text
from sae.core.locks import exclusive_dir
from sae.core.tracking import LoggerConfig, build_logger, finish, log_results, numbers_only
from sae.dashboard.config import register_dashboard_configs
from sae.dashboard.stages import run_stage
from sae.evaluation.config import EvaluateConfig, default_eval_dir, register_eval_configs
from sae.evaluation.corpora import corpus_configs, corpus_table
from sae.evaluation.metrics_stage import compute_corpus_metrics, compute_metrics
from sae.formats.interop import FOREIGN, check_matches
from sae.formats.native import find_sae_dir, load_sae
from sae.formats.run_config import RunConfigs, run_configs
from sae.interp.backends import ExplainerConfig, explainer_config, register_explainer_configs
from sae.interp.config import InterpConfig, register_interp_configs
from sae.interp.pipeline import InterpFailed, run_interp
from sae.lm.bridge import hook_name, pick_device
from sae.sweeps.evaluation import evaluate_sweep
from sae.text.sources import DataConfig
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
    bridge: Callable[[], Any] | None = None  # the language model shared with other SAEs' evaluations (a sweep)


DATA_CONF = Path(__file__).resolve().parent / "conf" / "data"


def metrics_stage(job: Job) -> dict:
    metrics, plots = compute_metrics(
        job.sae, job.sae_dir, job.eval_dir, job.run, job.cfg.metrics, job.cfg.seed, bridge=job.bridge
    )
    atomic_write_json(job.eval_dir / "metrics.json", metrics)
    numbers = dict(metrics)
    if job.cfg.eval_corpora:
        by_corpus = corpus_metrics(job)
        metrics = {**metrics, "by_corpus": by_corpus}
        numbers.update({f"corpus/{name}/{k}": v for name, block in by_corpus.items() for k, v in block.items()})
    log_to_run(job.run.logger, job.eval_dir, job.run.run_name, numbers, plots)
    print(json.dumps({k: v for k, v in numbers.items() if isinstance(v, (int, float))}, indent=2))
    return metrics


def corpus_metrics(job: Job) -> dict[str, dict]:
    """The held-out metrics on the training data and on each of `eval_corpora`: metrics_by_corpus.json and .md."""
    corpora = {f"{job.run.data.alias} (training)": job.run.data}
    for name, data in corpus_configs(job.cfg.eval_corpora, DATA_CONF, job.run.data).items():
        if data != job.run.data:
            corpora[name] = data
    m, seed = job.cfg.metrics, job.cfg.seed
    by_corpus = compute_corpus_metrics(job.sae, job.sae_dir, job.eval_dir, job.run, m, seed, corpora, bridge=job.bridge)
    atomic_write_json(job.eval_dir / "metrics_by_corpus.json", {"sae_path": str(job.sae_dir), "corpora": by_corpus})
    title = f"# Held-out metrics by corpus: `{job.sae_dir}`"
    atomic_write_text(job.eval_dir / "metrics_by_corpus.md", f"{title}\n\n{corpus_table(by_corpus)}\n")
    return by_corpus


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
    bridge = job.bridge() if job.bridge is not None else None
    return run_interp(
        job.sae_dir, interp, explainer, job.eval_dir, logger=job.run.logger, bridge=bridge, sae=job.sae, sae_cfg=job.sae_cfg
    )


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


def check_metrics(cfg: EvaluateConfig) -> None:
    """The evaluation corpora exist (and their packages are installed) before any SAE is evaluated."""
    corpus_configs(cfg.eval_corpora, DATA_CONF, DataConfig(source="wiki_offline", alias="wiki"))


STAGES: dict[str, Stage] = {
    "metrics": Stage(metrics_stage, check_metrics),
    "interp": Stage(interp_stage, check_interp),
    **{name: dashboard_stage(name) for name in ("dashboard", "serve", "rubric_report")},
}
COMPOSITE = {"all": ("metrics", "interp")}


def stage_names(cfg: EvaluateConfig) -> tuple[str, ...]:
    """The stages to run, after their start-up checks (e.g. an API key), before any of them does work."""
    names = COMPOSITE.get(cfg.stage, (cfg.stage,))
    for name in names:
        if STAGES[name].check:
            STAGES[name].check(cfg)
    return names


def load_job(cfg: EvaluateConfig, sae_dir: Path, eval_dir: Path, bridge: Callable[[], Any] | None = None) -> Job:
    sae, sae_cfg = load_sae(sae_dir, device=pick_device(cfg.device))
    overrides = {"model": cfg.model, "data": cfg.data, "activations": cfg.activations, "logger": cfg.logger}
    run = run_configs(sae_cfg, overrides)
    if sae_cfg.get("format") in FOREIGN:  # another library's SAE: it must be run on the model and hook it was trained on
        check_matches(sae_cfg, run.model.name, hook_name(run.model))
    return Job(cfg, sae_dir, eval_dir, sae, sae_cfg, run, bridge)


def run_stages(job: Job, names: tuple[str, ...]) -> dict:
    """The stages in order, holding the evaluation directory's lock (serve only reads what the others wrote)."""
    if names == ("serve",):
        return {"serve": STAGES["serve"].run(job)}
    with exclusive_dir(job.eval_dir, "this evaluation"):
        return {name: STAGES[name].run(job) for name in names}


def evaluate(cfg: EvaluateConfig, eval_dir: Path) -> dict:
    names = stage_names(cfg)
    if cfg.sweep_dir:
        interp = interp_settings(cfg)[0] if "interp" in names else None
        return evaluate_sweep(cfg, Path(cfg.sweep_dir), eval_dir, names, interp, load_job, run_stages)
    return run_stages(load_job(cfg, find_sae_dir(cfg.sae_path), eval_dir), names)


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
    if not values and any(a.startswith("sweep_dir=") for a in args):
        return None  # a whole sweep: its checks run at start-up (sae/evaluation/config.py)
    if not values:
        return "sae_path is missing: python evaluate.py sae_path=<training run dir or its sae/ dir> (or sweep_dir=<sweep dir>)."
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
