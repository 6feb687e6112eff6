"""Evaluate a trained SAE.

    python evaluate.py sae_path=outputs/<model>/<data>/<run>            # stage=metrics (default)
    python evaluate.py sae_path=... stage=interp                        # automated interpretability (sae.interp)
    python evaluate.py sae_path=... stage=all metrics.ce_tokens=32768
    python evaluate.py sae_path=... stage=dashboard | serve | rubric_report   # feature browser (sae.dashboard)

The metrics stage writes `metrics.json` (reconstruction_score, kl_score, ce_*, l0, explained_variance,
mse, cosine_similarity, norm_ratio, dead_fraction, ultralow_fraction, decoder cosines of rare features
vs the rest) and PNG plots into `<training run dir>/eval/`, and logs them to the SAE's W&B project.
Each part is stored under `eval/parts/` keyed by its settings and the SAE's weights, so an
interrupted or repeated evaluation only computes what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sae.config import (ActivationsConfig, ConfigError, DataConfig, LoggerConfig, ModelConfig, register_configs,
                        to_objects)
from sae.eval_config import EvaluateConfig, register_eval_configs
from sae.dashboard.config import register_dashboard_configs
from sae.interp.config import register_interp_configs
from sae.io import WEIGHTS, find_sae_dir, load_sae

register_configs()
register_eval_configs()
register_interp_configs()
register_dashboard_configs()


class PartStore:
    """One JSON file per finished part, reused only when its settings (incl. the SAE's weights) match."""

    def __init__(self, directory: Path, identity: dict):
        self.directory = directory
        self.identity = identity

    def get_or_compute(self, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
        key = {**self.identity, **settings}
        path = self.directory / f"{name}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("settings") == key:
                print(f"[{name}] reusing {path}")
                return stored["result"]
        print(f"[{name}] computing ...")
        result = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": key, "result": result}, default=_json_safe))
        tmp.replace(path)
        return result


def _json_safe(value: Any):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def _finite(metrics: dict) -> dict:
    """NaN (e.g. no ultralow features to compare) becomes null in JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def resolve_run_configs(cfg: EvaluateConfig, sae_cfg: dict) -> dict:
    """The training run's model/data/activations/logger settings with this evaluation's overrides on top."""
    train = sae_cfg.get("train_config") or {}
    out = {}
    for name, cls in (("model", ModelConfig), ("data", DataConfig), ("activations", ActivationsConfig), ("logger", LoggerConfig)):
        base = dict(train.get(name) or {})
        if name == "model" and not base:  # an SAE saved without its training config
            base = {"name": sae_cfg["model"], "alias": "model", "layer": sae_cfg["layer"], "hook": sae_cfg["hook"]}
        merged = OmegaConf.merge(OmegaConf.structured(cls), base, getattr(cfg, name))
        out[name] = to_objects(merged, cls)
    return out


def metrics_stage(cfg: EvaluateConfig, sae_dir: Path, eval_dir: Path, run: dict, sae_cfg: dict) -> dict:
    from sae.activations import build_cache, harvest
    from sae.evaluation import (activation_stats, heldout_tokens, mean_pairwise_cosine, pairwise_cosines,
                                sae_reconstruction, spliced_loss)
    from sae.lm import bos_token_id, hook_name, lazy_bridge
    from sae.metrics import ULTRALOW_DENSITY, density_summary, log10_density
    from sae.plots import plot_decoder_similarity, plot_density_histogram

    m = cfg.metrics
    model_cfg, data_cfg, act_cfg = run["model"], run["data"], run["activations"]
    sae, _ = load_sae(sae_dir)
    bridge = lazy_bridge(model_cfg)
    weights = hashlib.sha256((sae_dir / WEIGHTS).read_bytes()).hexdigest()[:16]
    store = PartStore(eval_dir / "parts", {"sae_weights": weights, "hook": hook_name(model_cfg), "model": model_cfg.name})
    data_id = {"data": OmegaConf.to_container(OmegaConf.structured(data_cfg))}
    seed = int((sae_cfg.get("train_config") or {}).get("sae", {}).get("seed", 0))

    def density_part() -> dict:
        cache = build_cache(bridge, model_cfg, data_cfg, act_cfg, seed=seed)
        order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(cfg.seed))[: m.density_tokens]
        chunks = (cache.rows(order[i : i + 8192]) for i in range(0, len(order), 8192))
        stats = activation_stats(sae, chunks, m.density_tokens)
        return {"fire_counts": stats.fire_counts.tolist(), "tokens": stats.tokens}

    def heldout_part() -> dict:
        stream = harvest(bridge(), model_cfg, data_cfg, m.harvest_batch_size, split="heldout")
        stats = activation_stats(sae, stream, m.heldout_tokens)
        counts = density_summary(stats.fire_counts, stats.tokens)
        return {**stats.result(), "dead_fraction": counts["dead_fraction"]}

    def ce_part() -> dict:
        model = bridge()
        bos = bos_token_id(model)
        tokens = heldout_tokens(model, data_cfg, m.ce_tokens, bos)
        return spliced_loss(model, hook_name(model_cfg), tokens, sae_reconstruction(sae), bos, m.ce_batch_size).as_dict()

    metrics: dict[str, Any] = {"sae_path": str(sae_dir), "model": model_cfg.name, "hook": hook_name(model_cfg),
                               "d_in": sae.d_in, "n_features": sae.n_features, "expansion": sae.n_features / sae.d_in}
    plots = {}
    if m.density_tokens:
        density = store.get_or_compute("density", {"density_tokens": m.density_tokens, "seed": cfg.seed,
                                                   "activations": act_cfg.n_tokens, **data_id}, density_part)
        counts, n_tok = torch.tensor(density["fire_counts"]), density["tokens"]
        metrics.update(density_summary(counts, n_tok))
        log_density = log10_density(counts, n_tok)
        plots["density_histogram"] = plot_density_histogram(
            log_density.numpy(), eval_dir / "density_histogram.png",
            title=f"{sae.n_features} features ({sae.n_features // sae.d_in}x), density over {n_tok:,} training tokens")
        rare = counts.double() / max(n_tok, 1) < ULTRALOW_DENSITY
        groups = {"ultralow (<1e-6)": sae.W_dec[rare].detach(), "rest": sae.W_dec[~rare].detach()}
        means = {k: mean_pairwise_cosine(v) for k, v in groups.items()}
        metrics.update({"decoder_cosine_ultralow": means["ultralow (<1e-6)"], "decoder_cosine_rest": means["rest"],
                        "n_ultralow": int(rare.sum())})
        plots["decoder_similarity"] = plot_decoder_similarity(
            {k: pairwise_cosines(v, m.similarity_plot_features, cfg.seed).numpy() for k, v in groups.items()}, means,
            eval_dir / "decoder_similarity.png", title="rare features are more similar? pairwise decoder cosines")
    if m.heldout_tokens:
        heldout = store.get_or_compute("heldout", {"heldout_tokens": m.heldout_tokens, **data_id}, heldout_part)
        metrics.update({k: v for k, v in heldout.items() if k not in ("tokens", "dead_fraction")})
        metrics.update({"heldout_tokens": heldout["tokens"], "heldout_dead_fraction": heldout["dead_fraction"]})
    if m.ce_tokens:
        ce = store.get_or_compute("spliced_loss", {"ce_tokens": m.ce_tokens, **data_id}, ce_part)
        metrics.update({k if k != "tokens" else "ce_tokens": v for k, v in ce.items()})
    metrics = _finite(metrics)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log_to_run(run["logger"], eval_dir, sae_cfg, metrics, plots)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    return metrics


def log_to_run(logger_cfg: LoggerConfig, eval_dir: Path, sae_cfg: dict, metrics: dict, plots: dict[str, Path]) -> None:
    """Log to the SAE's W&B project (an `eval` job next to its training run), or to CSV."""
    from sae.run_logger import build_logger

    run_name = (sae_cfg.get("train_config") or {}).get("run_name", Path(metrics["sae_path"]).parent.name)
    logger = build_logger(logger_cfg, eval_dir, f"eval-{run_name}", {"sae": metrics["sae_path"]}, job_type="eval")
    numbers = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if type(logger).__name__ == "WandbLogger":
        import wandb

        logger.experiment.summary.update(numbers)
        logger.experiment.log({**numbers, **{f"eval/{k}": wandb.Image(str(p)) for k, p in plots.items()}})
        logger.experiment.finish()
    else:
        logger.log_metrics(numbers, step=0)
        logger.save()


def interp_stage(cfg: EvaluateConfig, sae_dir: Path, eval_dir: Path, run: dict) -> dict:
    """Automated interpretability, provided by `sae.interp.pipeline.run_interp` (issue 5)."""
    try:
        from sae.interp.config import ExplainerConfig, InterpConfig
        from sae.interp.pipeline import run_interp
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("sae.interp"):
            raise ConfigError(f"stage=interp is not available: {exc.name} is not installed in this checkout.") from None
        raise
    def build(cls, value):
        if isinstance(value, cls):
            return value
        return cls(**(OmegaConf.to_container(value) if isinstance(value, DictConfig) else value or {}))

    interp, explainer = build(InterpConfig, cfg.interp), build(ExplainerConfig, cfg.explainer)
    if cfg.units is not None:  # `units=neurons` is shorthand for interp.units=neurons
        interp = InterpConfig(**{**dataclasses.asdict(interp), "units": cfg.units})
    return run_interp(sae_dir, interp, explainer, eval_dir, logger=run["logger"])


STAGES = {"metrics": ("metrics",), "interp": ("interp",), "all": ("metrics", "interp"),
          "dashboard": ("dashboard",), "serve": ("serve",), "rubric_report": ("rubric_report",)}


def evaluate(cfg: EvaluateConfig, eval_dir: Path) -> dict:
    sae_dir = find_sae_dir(cfg.sae_path)
    _, sae_cfg = load_sae(sae_dir)
    run = resolve_run_configs(cfg, sae_cfg)
    eval_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for stage in STAGES[cfg.stage]:
        if stage == "metrics":
            results["metrics"] = metrics_stage(cfg, sae_dir, eval_dir, run, sae_cfg)
        elif stage == "interp":
            results["interp"] = interp_stage(cfg, sae_dir, eval_dir, run)
        else:  # the feature browser (sae.dashboard.stages): dashboard | serve | rubric_report
            from sae.dashboard import stages

            settings = stages.dashboard_config(cfg.dashboard)
            if cfg.units is not None:
                settings = dataclasses.replace(settings, units=[cfg.units])
            results[stage] = getattr(stages, f"run_{stage}")(settings, sae_dir, eval_dir, run)
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict | None:
    try:
        objects = to_objects(cfg, EvaluateConfig)
        return evaluate(objects, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)


def quote_sae_path(arg: str) -> str:
    """Run directories are named like `..._l1=3e-4_lr=1e-4_...`; Hydra's override grammar needs such a value quoted."""
    key, sep, value = arg.partition("=")
    if key != "sae_path" or not sep or value[:1] in ("'", '"'):
        return arg
    quote = '"' if "'" in value else "'"
    return f"{key}={quote}{value}{quote}"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv = [sys.argv[0], *map(quote_sae_path, sys.argv[1:])]
    main()
