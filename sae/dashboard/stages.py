"""The feature browser's stages of evaluate.py: dashboard (compute the data, write the site),
serve (the local rating server, with a model for sampling on demand) and rubric_report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sae.dashboard import data
from sae.dashboard.config import DashboardConfig
from sae.dashboard.logits import direct_path, final_norm_scale, logit_weights, unembedding
from sae.dashboard.rubric import report
from sae.dashboard.server import DashboardServer, SiteData, serve
from sae.dashboard.site import write_site
from sae.dashboard.steering import pinned_samples
from sae.dashboard.units import UnitSpace
from sae.formats.native import load_sae, weights_digest
from sae.lm.bridge import bos_token_id, hook_name, lazy_bridge


def dashboard_config(value) -> DashboardConfig:
    if isinstance(value, DashboardConfig):
        return value
    raw = OmegaConf.to_container(value) if isinstance(value, DictConfig) else dict(value or {})
    names = {f.name for f in dataclasses.fields(DashboardConfig)}
    return DashboardConfig(**{k: v for k, v in raw.items() if k in names})


class Session:
    """The SAE, its model (loaded on first use) and its feature-data folder."""

    def __init__(self, sae_dir: Path, eval_dir: Path, run, cfg: DashboardConfig, sae=None):
        self.sae = sae if sae is not None else load_sae(sae_dir)[0]
        self.sae_dir, self.eval_dir, self.run, self.cfg = sae_dir, eval_dir, run, cfg
        self.sae_id = weights_digest(sae_dir)
        self.hook = hook_name(run.model)
        self.bridge = lazy_bridge(run.model)
        self.root = eval_dir / "dashboard" / self.sae_id
        self.site = eval_dir / "dashboard" / "site"
        self.db = eval_dir / "ratings.sqlite"

    def space(self, kind: str, width: int):
        return UnitSpace(kind, self.sae, width)


def run_stage(name: str, job) -> dict:
    """evaluate.py's entry: `job` holds the settings (cfg.dashboard, cfg.units), the SAE and its run."""
    settings = dashboard_config(job.cfg.dashboard)
    if job.cfg.units is not None:  # `units=neurons` is shorthand for dashboard.units=[neurons]
        settings = dataclasses.replace(settings, units=[job.cfg.units])
    run = {"dashboard": run_dashboard, "serve": run_serve, "rubric_report": run_rubric_report}[name]
    return run(settings, job.sae_dir, job.eval_dir, job.run, sae=job.sae)


def unit_logits(space: UnitSpace, w_u, gamma, k: int, direct: bool):
    """Logit weights of a list of units, or None for each where the hook has no direct path to the
    logits (logits.direct_path) or the unit has no direction in the residual stream's space."""

    def weights(units: list[int]) -> list:
        directions = space.directions(units, w_u.shape[0]) if direct else None
        return [None] * len(units) if directions is None else logit_weights(directions, w_u, gamma, k)

    return weights


def run_dashboard(cfg: DashboardConfig, sae_dir: Path, eval_dir: Path, run, sae=None) -> dict:
    s = Session(sae_dir, eval_dir, run, cfg, sae)
    store = data.DashboardStore(s.root, data.identity(cfg, s.sae_id, s.hook, run.data))
    bridge = s.bridge()
    bos = bos_token_id(bridge)
    token_ids, acts = data.heldout_pass(store, s.bridge, s.hook, run.model.layer, run.data, cfg, bos)
    w_u, gamma = unembedding(bridge), final_norm_scale(bridge)
    direct = direct_path(s.hook, acts.shape[-1], w_u.shape[0])
    indices = {}
    for kind in cfg.units:
        space = s.space(kind, acts.shape[-1])
        logits = unit_logits(space, w_u, gamma, cfg.n_logits, direct)
        indices[kind] = data.build_units(space, token_ids, acts, bos, cfg, store, logits)
        data.build_ablations(space, bridge, s.hook, token_ids, acts, bos, cfg, store, indices[kind])
        data.build_steering(space, bridge, s.hook, bos, cfg, store, indices[kind])
    metrics_path = eval_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    summary = {
        "sae_path": str(sae_dir),
        "hook": s.hook,
        "direct_logits": direct,
        "model": run.model.name,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
    }
    page = write_site(s.root, s.site, eval_dir, indices, bridge.tokenizer.decode, summary, s.sae_id, cfg.part_units, s.db)
    print(
        f"feature browser written to {s.site}\n"
        f"  open it: {page.as_uri()}   (read-only)\n"
        f"  or serve it with rating and sampling: python evaluate.py sae_path='{sae_dir}' stage=serve"
    )
    return {"site": str(s.site), "units": {k: v["n_units"] for k, v in indices.items()}}


def steerer(session: Session, cfg: DashboardConfig):
    """Pinned sampling on demand for the server (the model loads on the first request)."""
    site = SiteData(session.site)

    def run(kind: str, unit: int, multiple: float, prompt: str) -> dict:
        bridge = session.bridge()
        value = multiple * float(site.max_activation[kind][unit] or 0.0)
        samples = pinned_samples(
            bridge,
            session.hook,
            session.space(kind, site.n_units[kind]),
            unit,
            value,
            [prompt],
            cfg.steering_tokens,
            cfg.steering_temperature,
            cfg.seed,
            bos_token_id(bridge),
        )
        return {"multiple": multiple, "value": value, "samples": samples}

    return run


def run_serve(cfg: DashboardConfig, sae_dir: Path, eval_dir: Path, run, sae=None) -> dict:
    s = Session(sae_dir, eval_dir, run, cfg, sae)
    server = DashboardServer(
        s.site,
        s.db,
        cfg.host,
        cfg.port,
        steerer=steerer(s, cfg),
        blind_per_kind=cfg.blind_per_kind,
        seed=cfg.seed,
        allowed_hosts=tuple(cfg.allowed_hosts),
    )
    serve(server)
    return {"url": server.url}


def run_rubric_report(cfg: DashboardConfig, sae_dir: Path, eval_dir: Path, run, sae=None) -> dict:
    return report(
        eval_dir / "ratings.sqlite",
        eval_dir / "rubric",
        weights_digest(sae_dir),
        run.logger,
        run_name=f"rubric-{Path(sae_dir).resolve().parent.name}",
    )
