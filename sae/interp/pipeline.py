"""Automated interpretability end to end: records -> explanations -> simulations -> scores -> summary.

    run_interp(sae_path, InterpConfig(...), ExplainerConfig(...), run_dir)

Everything a backend returns is appended to `run_dir/interp/*.jsonl` as it arrives, keyed by SAE,
units, unit, explainer/simulator and prompt version, so a rerun resumes: nothing that succeeded is
asked again, and units that failed (with their reason stored) are retried. Every method is scored
twice: with the unit's own explanation and with another unit's (the wrong-explanation control);
a method means something only when the first clearly beats the second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from sae.config import ConfigError, DataConfig, LoggerConfig, ModelConfig
from sae.interp.backends import Backend, BackendError, Explanation, build_backend
from sae.interp.config import ExplainerConfig, InterpConfig
from sae.interp.prompts import PROMPT_VERSION
from sae.interp.records import (Harvest, UnitRecords, build_records, choose_candidates, harvest, load_records,
                                save_records, unit_encoder)
from sae.interp.scoring import score_split, split_records, summarise
from sae.interp.store import ResultStore

GROUPS = ("top", "random", "quantiles")


def _dataclass_from(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def sae_identity(sae_dir: Path) -> str:
    """A short hash of the weights: results of a retrained SAE in the same place are never reused."""
    h = hashlib.sha256()
    with open(sae_dir / "sae.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def unit_hook(sae_cfg: dict, interp: InterpConfig) -> str:
    if interp.units == "neurons" and interp.neuron_hook:
        return f"blocks.{sae_cfg['layer']}.{interp.neuron_hook}"
    return sae_cfg["hook_name"]


def collect(sae, sae_cfg: dict, interp: InterpConfig, out_dir: Path, meta: dict, bridge=None) -> tuple[list[UnitRecords], list[int]]:
    """Records for the chosen units, from the saved file when the settings match, else one model pass."""
    path = out_dir / f"records_{interp.units}.json"
    saved = load_records(path, meta)
    if saved is not None:
        return saved, meta.get("skipped", [])
    from sae.lm import bos_token_id, load_language_model

    tc = sae_cfg.get("train_config") or {}
    if "model" not in tc or "data" not in tc:
        raise ConfigError(f"{meta['sae_path']}/cfg.json has no train_config.model/data: cannot tell which model and text it was trained on.")
    model_cfg = _dataclass_from(ModelConfig, tc["model"])
    data_cfg = _dataclass_from(DataConfig, tc["data"])
    bridge = bridge or load_language_model(model_cfg)
    hook = unit_hook(sae_cfg, interp)
    if hook not in bridge.hook_dict:
        raise ConfigError(f"interp.neuron_hook={interp.neuron_hook!r}: {hook} is not a hook of {model_cfg.name}.")
    if interp.units == "neurons":
        import torch

        probe = torch.tensor([[bos_token_id(bridge)]], device=bridge.cfg.device)
        _, cache = bridge.run_with_cache(probe, names_filter=hook, stop_at_layer=sae_cfg["layer"] + 1)
        n_units = cache[hook].shape[-1]
    else:
        n_units = sae.n_features
    candidates = choose_candidates(n_units, interp)
    encode = unit_encoder(sae, interp.units, candidates)
    h: Harvest = harvest(bridge, hook, sae_cfg["layer"], encode, candidates, data_cfg, interp, bos_token_id(bridge))
    records, skipped = build_records(h, interp, bridge.tokenizer, explicit=interp.features is not None)
    save_records(path, meta, records)
    return records, skipped


class MethodRun:
    """One explainer/simulator pair over all units: explanations, then simulations (own + control)."""

    def __init__(self, name: str, backend: Backend, store: ResultStore, base_key: dict, workers: int, log=print):
        self.name, self.backend, self.store, self.base_key, self.workers, self.log = name, backend, store, base_key, workers, log

    def _map(self, fn, items):
        if self.workers <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, items))

    def explain_key(self, unit: int) -> dict:
        return {**self.base_key, "stage": "explain", "unit": unit, "explainer": self.backend.identity}

    def explain(self, rec: UnitRecords) -> dict:
        key = self.explain_key(rec.unit)
        if self.store.done(key):
            return self.store.get(key)
        try:
            e = self.backend.explain(rec)
            row = self.store.put(key, "ok", explanation=e.text, patterns=e.patterns, usage=e.usage)
            self.log(f"[{self.name}] unit {rec.unit}: {e.text[:100]}")
        except BackendError as exc:
            row = self.store.put(key, "failed", reason=str(exc))
            self.log(f"[{self.name}] unit {rec.unit}: explanation FAILED: {exc}")
        except Exception as exc:  # a bug or an unexpected answer: keep going, keep the reason
            row = self.store.put(key, "failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
            self.log(f"[{self.name}] unit {rec.unit}: explanation FAILED: {type(exc).__name__}: {exc}")
        return row

    def simulate(self, job: tuple[UnitRecords, int, dict], groups: tuple[str, ...]) -> dict:
        rec, donor, expl_row = job
        text_hash = hashlib.sha256(expl_row["explanation"].encode()).hexdigest()[:12]
        key = {**self.base_key, "stage": "simulate", "unit": rec.unit, "simulator": self.backend.simulator_identity(),
               "explanation_of": donor, "explanation_sha": text_hash}
        if self.store.done(key):
            return self.store.get(key)
        records = [r for g in groups for r in getattr(rec, g)]
        try:
            sim = self.backend.simulate(Explanation(expl_row["explanation"], expl_row.get("patterns")), records)
            preds, i = {}, 0
            for g in groups:
                n = len(getattr(rec, g))
                preds[g] = [[round(v, 5) for v in p] for p in sim.predictions[i : i + n]]
                i += n
            return self.store.put(key, "ok", method=sim.method, predictions=preds, usage=sim.usage)
        except BackendError as exc:
            self.log(f"[{self.name}] unit {rec.unit} (explanation of {donor}): simulation FAILED: {exc}")
            return self.store.put(key, "failed", reason=str(exc))
        except Exception as exc:
            self.log(f"[{self.name}] unit {rec.unit}: simulation FAILED: {type(exc).__name__}: {exc}")
            return self.store.put(key, "failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])

    def run(self, units: list[UnitRecords], interp: InterpConfig) -> list[dict]:
        explained = self._map(self.explain, units)
        ok = [i for i, row in enumerate(explained) if row["status"] == "ok"]
        groups = tuple(g for g in GROUPS if g != "quantiles" or "quantiles" in interp.splits)
        jobs, owners = [], []
        for pos, i in enumerate(ok):
            jobs.append((units[i], units[i].unit, explained[i]))
            owners.append((i, "own"))
            if interp.wrong_explanation_control and len(ok) > 1:
                donor = ok[(pos + 1) % len(ok)]
                jobs.append((units[i], units[donor].unit, explained[donor]))
                owners.append((i, "control"))
        sims = self._map(lambda job: self.simulate(job, groups), jobs)
        by_unit: dict[int, dict] = {}
        for (i, role), job, sim in zip(owners, jobs, sims):
            by_unit.setdefault(i, {})[role] = (job[1], sim)
        rows = []
        for i, rec in enumerate(units):
            row = {"unit": rec.unit, "method": self.name, "explainer": self.backend.identity, "density": rec.density,
                   "max_activation": rec.max_activation, "status": explained[i]["status"]}
            if explained[i]["status"] != "ok":
                row["reason"] = explained[i].get("reason")
                rows.append(row)
                continue
            row["explanation"] = explained[i]["explanation"]
            for role, (donor, sim) in by_unit.get(i, {}).items():
                prefix = "" if role == "own" else "control_"
                if role == "control":
                    row["control_explanation_of"] = donor
                if sim["status"] != "ok":
                    row["status"] = "failed" if role == "own" else row["status"]
                    row[f"{prefix}reason"] = sim.get("reason")
                    continue
                row[f"{prefix}simulator_method"] = sim["method"]
                for split in interp.splits:
                    recs = split_records(rec, split)
                    preds = self._split_predictions(rec, sim["predictions"], split)
                    s = score_split(recs, preds)
                    row[f"{prefix}{split}"] = s
            rows.append(row)
        return rows

    @staticmethod
    def _split_predictions(rec: UnitRecords, preds: dict, split: str) -> list[list[float]]:
        if split == "top_and_random":
            return preds["top"] + preds["random"][: len(rec.top) or len(rec.random)]
        return preds["random" if split == "random_only" else "quantiles"]


def summarise_method(rows: list[dict], interp: InterpConfig) -> dict:
    out: dict = {"n_units": len(rows), "n_failed": sum(r["status"] != "ok" for r in rows),
                 "failed": {str(r["unit"]): r.get("reason") for r in rows if r["status"] != "ok"}}
    methods = sorted({r.get("simulator_method") for r in rows if r.get("simulator_method")})
    out["simulator_methods"] = methods
    for split in interp.splits:
        part = {}
        for prefix in ("", "control_"):
            for metric in ("spearman", "pearson"):
                vals = [r[f"{prefix}{split}"][metric] for r in rows if r["status"] == "ok" and f"{prefix}{split}" in r]
                part[f"{prefix}{metric}"] = summarise(vals, interp.bootstrap_resamples, interp.seed)
        out[split] = part
    return out


def run_interp(sae_path: str | Path, interp: InterpConfig, explainer: ExplainerConfig, run_dir: str | Path,
               logger: Optional[LoggerConfig] = None, bridge=None, wandb_run=None, log=print) -> dict:
    """Score `interp.units` of the SAE at `sae_path`; returns the summary also written to interp_summary.json."""
    from sae.io import find_sae_dir, load_sae

    run_dir = Path(run_dir)
    out_dir = run_dir / "interp"
    out_dir.mkdir(parents=True, exist_ok=True)
    sae_dir = find_sae_dir(sae_path)
    sae, sae_cfg = load_sae(sae_dir)
    sid = sae_identity(sae_dir)
    hook = unit_hook(sae_cfg, interp)
    record_settings = {k: v for k, v in asdict(interp).items()
                       if k not in ("splits", "baseline", "wrong_explanation_control", "bootstrap_resamples")}
    meta = {"sae_path": str(sae_dir), "sae": sid, "hook": hook, "settings": record_settings}
    records, skipped = collect(sae, sae_cfg, interp, out_dir, meta, bridge)
    if skipped:
        log(f"skipped {len(skipped)} sampled {interp.units} that fired on fewer than {interp.n_explain} held-out windows")
    if not records:
        raise RuntimeError(f"no {interp.units} fired on the held-out text; nothing to score.")
    records_id = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    base_key = {"sae": sid, "units": interp.units, "hook": hook, "records": records_id, "prompt": PROMPT_VERSION}

    store = ResultStore(out_dir / "results.jsonl")
    configs = [explainer]
    if interp.baseline and explainer.kind != "token_pattern":
        configs.insert(0, ExplainerConfig(kind="token_pattern"))
    all_rows, methods = [], {}
    for cfg in configs:
        try:
            backend = build_backend(cfg)
        except BackendError as exc:
            raise ConfigError(str(exc)) from exc
        if hasattr(backend, "memo"):
            backend.memo = ResultStore(out_dir / "requests.jsonl")
        workers = cfg.max_concurrency if cfg.kind == "openai" else 1
        name = cfg.kind
        rows = MethodRun(name, backend, store, base_key, workers, log).run(records, interp)
        all_rows.extend(rows)
        methods[name] = {"explainer": cfg.identity, **summarise_method(rows, interp)}

    with open(out_dir / f"scores_{interp.units}.jsonl", "w") as f:
        for row in all_rows:
            f.write(json.dumps(_nan_to_null(row)) + "\n")
    primary = methods[explainer.kind]
    first = interp.splits[0]
    summary = {
        "sae": str(sae_dir), "sae_id": sid, "units": interp.units, "hook": hook, "prompt_version": PROMPT_VERSION,
        "unit_ids": [r.unit for r in records], "skipped_never_fired": skipped,
        "primary_method": explainer.kind, "split": first,
        "spearman": primary[first]["spearman"], "pearson": primary[first]["pearson"],
        "control_spearman": primary[first]["control_spearman"], "control_pearson": primary[first]["control_pearson"],
        "methods": methods,
    }
    write_summary(run_dir / "interp_summary.json", interp.units, summary)
    log_wandb(all_rows, summary, interp, run_dir, logger, wandb_run)
    return summary


def write_summary(path: Path, units: str, summary: dict) -> None:
    """interp_summary.json holds one entry per unit kind, so features and neurons can share a run directory."""
    existing = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing[units] = summary
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_nan_to_null(existing), indent=2, allow_nan=False))
    tmp.replace(path)


def _nan_to_null(x):
    """Strict JSON: an undefined score (a unit silent on every scored token) is null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_null(v) for v in x]
    return x


def log_wandb(rows: list[dict], summary: dict, interp: InterpConfig, run_dir: Path, logger: Optional[LoggerConfig], wandb_run=None) -> None:
    """A W&B table of explanations and scores, and the score histogram (reusing sae/run_logger.py)."""
    if wandb_run is None and (logger is None or logger.kind != "wandb"):
        return
    import wandb

    own = None
    if wandb_run is None:
        from sae.run_logger import build_logger

        own = build_logger(logger, run_dir, f"interp-{interp.units}", {"interp": asdict(interp)}, job_type="interp")
        wandb_run = own.experiment
    split = interp.splits[0]
    columns = ["units", "unit", "method", "status", "explanation", "simulator_method", "spearman", "pearson",
               "control_spearman", "control_pearson", "density", "reason"]
    data = []
    for r in rows:
        s, c = r.get(split, {}), r.get(f"control_{split}", {})
        data.append([interp.units, r["unit"], r["method"], r["status"], r.get("explanation", ""), r.get("simulator_method", ""),
                     s.get("spearman"), s.get("pearson"), c.get("spearman"), c.get("pearson"), r["density"], r.get("reason") or ""])
    payload = {f"interp/{interp.units}/explanations": wandb.Table(columns=columns, data=data)}
    for method in sorted({r["method"] for r in rows}):
        vals = [r[split]["spearman"] for r in rows if r["method"] == method and split in r and not math.isnan(r[split]["spearman"])]
        if vals:
            payload[f"interp/{interp.units}/{method}/spearman_hist"] = wandb.Histogram(vals)
        m = summary["methods"][method][split]
        for metric in ("spearman", "pearson", "control_spearman", "control_pearson"):
            payload[f"interp/{interp.units}/{method}/{metric}_mean"] = m[metric]["mean"]
    wandb_run.log(payload)
    if own is not None:
        wandb_run.finish()
