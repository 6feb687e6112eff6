"""Automated interpretability end to end: records -> explanations -> simulations -> scores -> summary.

    run_interp(sae_path, InterpConfig(...), ExplainerConfig(...), run_dir)

Everything a backend returns is appended to `run_dir/interp/*.jsonl` as it arrives, keyed by SAE,
units, unit, explainer/simulator and prompt version, so a rerun resumes: nothing that succeeded is
asked again, and units that failed (with their reason stored) are retried. Every method is scored
twice: with the unit's own explanation and with another unit's (the wrong-explanation control);
a method means something only when the first clearly beats the second.
"""

from __future__ import annotations

import hashlib
import json
import math
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from sae.core.errors import ConfigError
from sae.core.files import atomic_write_json, atomic_write_text
from sae.core.tracking import LoggerConfig, build_logger, finish, log_results
from sae.formats.native import find_sae_dir, load_sae, weights_digest
from sae.interp.backends import Backend, BackendError, ExplainerConfig, Explanation, build_backend
from sae.interp.backends.token_pattern import TokenPatternConfig
from sae.interp.config import InterpConfig
from sae.interp.prompts import PROMPT_VERSION
from sae.interp.records import UnitRecords, build_records, harvest_units, load_records, save_records, unit_hook
from sae.interp.results import MethodSummary, Simulated, SplitSummary, UnitResult
from sae.interp.scoring import SPLITS, score_split, split_records, summarise
from sae.interp.store import ResultStore

GROUPS = ("top", "random", "quantiles")


class InterpFailed(RuntimeError):
    """Every unit failed: the results say why, and the run must not look like a success."""


def collect(
    sae, sae_cfg: dict, interp: InterpConfig, out_dir: Path, meta: dict, bridge=None
) -> tuple[list[UnitRecords], list[int]]:
    """Records for the chosen units (and the sampled units skipped for never firing), from the saved
    file when the settings match, else one model pass."""
    path = out_dir / f"records_{interp.units}.json"
    saved = load_records(path, meta)
    if saved is not None:
        return saved
    h, bridge = harvest_units(sae, sae_cfg, interp, bridge)
    records, skipped = build_records(h, interp, bridge.tokenizer, explicit=interp.features is not None)
    save_records(path, meta, records, skipped)
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
        explanation = Explanation(expl_row["explanation"], expl_row.get("patterns"))
        records = [r for g in groups for r in getattr(rec, g)]
        text_hash = hashlib.sha256(expl_row["explanation"].encode()).hexdigest()[:12]

        def key() -> dict:  # keyed by the simulation method actually used, known once resolved
            return {
                **self.base_key,
                "stage": "simulate",
                "unit": rec.unit,
                "simulator": self.backend.simulator_identity(),
                "explanation_of": donor,
                "explanation_sha": text_hash,
            }

        try:
            resolve = getattr(self.backend, "resolve_simulator", None)
            if resolve is not None and records:
                resolve(explanation, records[0])
        except BackendError as exc:
            self.log(f"[{self.name}] unit {rec.unit}: simulation FAILED: {exc}")
            return self.store.put(key(), "failed", reason=str(exc))
        if self.store.done(key()):
            return self.store.get(key())
        try:
            sim = self.backend.simulate(explanation, records)
            preds, i = {}, 0
            for g in groups:
                n = len(getattr(rec, g))
                preds[g] = [[round(v, 5) for v in p] for p in sim.predictions[i : i + n]]
                i += n
            return self.store.put(key(), "ok", method=sim.method, predictions=preds, usage=sim.usage)
        except BackendError as exc:
            self.log(f"[{self.name}] unit {rec.unit} (explanation of {donor}): simulation FAILED: {exc}")
            return self.store.put(key(), "failed", reason=str(exc))
        except Exception as exc:
            self.log(f"[{self.name}] unit {rec.unit}: simulation FAILED: {type(exc).__name__}: {exc}")
            return self.store.put(
                key(), "failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:]
            )

    def run(self, units: list[UnitRecords], interp: InterpConfig) -> list[UnitResult]:
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
        by_unit: dict[int, dict[str, Simulated]] = {}
        for (i, role), job, sim in zip(owners, jobs, sims, strict=False):
            by_unit.setdefault(i, {})[role] = self._scored(units[i], job[1], sim, interp)
        results = []
        for i, rec in enumerate(units):
            result = UnitResult(
                unit=rec.unit,
                method=self.name,
                explainer=self.backend.identity,
                density=rec.density,
                max_activation=rec.max_activation,
                status=explained[i]["status"],
            )
            if explained[i]["status"] != "ok":
                result.reason = explained[i].get("reason")
            else:
                result.explanation = explained[i]["explanation"]
                result.own = by_unit.get(i, {}).get("own")
                result.control = by_unit.get(i, {}).get("control")
                if result.own is None or result.own.status != "ok":
                    result.status, result.reason = "failed", result.own.reason if result.own else "not simulated"
            results.append(result)
        return results

    def _scored(self, rec: UnitRecords, donor: int, sim: dict, interp: InterpConfig) -> Simulated:
        if sim["status"] != "ok":
            return Simulated(explanation_of=donor, status="failed", reason=sim.get("reason"))
        splits = {split: score_split(split_records(rec, split), SPLITS[split](sim["predictions"])) for split in interp.splits}
        return Simulated(explanation_of=donor, status="ok", simulator_method=sim["method"], splits=splits)


def summarise_method(results: list[UnitResult], interp: InterpConfig, explainer: str) -> MethodSummary:
    """Own and control means over the same units: those where both are defined (own alone without a control)."""
    methods = sorted({r.own.simulator_method for r in results if r.own and r.own.simulator_method})
    splits = {}
    for split in interp.splits:
        units = [r for r in results if r.status == "ok" and not math.isnan(r.score("own", split, "spearman"))]
        if interp.wrong_explanation_control and any(r.control is not None for r in results):
            units = [r for r in units if not math.isnan(r.score("control", split, "spearman"))]
        stat = {
            f"{prefix}{metric}": summarise([r.score(role, split, metric) for r in units], interp.bootstrap_resamples, interp.seed)
            for role, prefix in (("own", ""), ("control", "control_"))
            for metric in ("spearman", "pearson")
        }
        splits[split] = SplitSummary(**stat)
    return MethodSummary(
        explainer=explainer,
        n_units=len(results),
        n_failed=sum(r.status != "ok" for r in results),
        failed={str(r.unit): r.reason for r in results if r.status != "ok"},
        simulator_methods=methods,
        splits=splits,
    )


def run_interp(
    sae_path: str | Path,
    interp: InterpConfig,
    explainer: ExplainerConfig,
    run_dir: str | Path,
    logger: Optional[LoggerConfig] = None,
    bridge=None,
    log=print,
    sae=None,
    sae_cfg: Optional[dict] = None,
) -> dict:
    """Score `interp.units` of the SAE at `sae_path`; returns the summary also written to interp_summary.json.

    `sae`/`sae_cfg`: the SAE already loaded (e.g. on the GPU) with its cfg.json; else loaded from `sae_path`.
    Raises InterpFailed (after writing every result) when no unit could be scored by the chosen explainer."""
    configs = [explainer]
    if interp.baseline and explainer.kind != "token_pattern":
        configs.insert(0, TokenPatternConfig())
    for cfg in configs:
        cfg.check_ready()  # a missing key fails here, before any model pass
    run_dir = Path(run_dir)
    out_dir = run_dir / "interp"
    out_dir.mkdir(parents=True, exist_ok=True)
    sae_dir = find_sae_dir(sae_path)
    if sae is None or sae_cfg is None:
        sae, sae_cfg = load_sae(sae_dir)
    sid = weights_digest(sae_dir)
    hook = unit_hook(sae_cfg, interp)
    record_settings = {
        k: v
        for k, v in asdict(interp).items()
        if k not in ("splits", "baseline", "wrong_explanation_control", "bootstrap_resamples")
    }
    meta = {"sae_path": str(sae_dir), "sae": sid, "hook": hook, "settings": record_settings}
    records, skipped = collect(sae, sae_cfg, interp, out_dir, meta, bridge)
    if skipped:
        log(f"skipped {len(skipped)} sampled {interp.units} that fired on fewer than {interp.n_explain} held-out windows")
    if not records:
        raise InterpFailed(f"no {interp.units} fired on the held-out text; nothing to score.")
    records_id = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    base_key = {"sae": sid, "units": interp.units, "hook": hook, "records": records_id, "prompt": PROMPT_VERSION}

    store = ResultStore(out_dir / "results.jsonl")
    results: list[UnitResult] = []
    methods: dict[str, MethodSummary] = {}
    for cfg in configs:
        try:
            backend = build_backend(cfg)
        except BackendError as exc:
            raise ConfigError(str(exc)) from exc
        if hasattr(backend, "memo"):
            backend.memo = ResultStore(out_dir / "requests.jsonl")
        rows = MethodRun(cfg.kind, backend, store, base_key, cfg.workers, log).run(records, interp)
        results.extend(rows)
        methods[cfg.kind] = summarise_method(rows, interp, cfg.identity)

    atomic_write_text(
        out_dir / f"scores_{interp.units}.jsonl", "".join(json.dumps(r.to_json(), allow_nan=False) + "\n" for r in results)
    )
    primary = methods[explainer.kind]
    first = interp.splits[0]
    summary = {
        "sae": str(sae_dir),
        "sae_id": sid,
        "units": interp.units,
        "hook": hook,
        "prompt_version": PROMPT_VERSION,
        "unit_ids": [r.unit for r in records],
        "skipped_never_fired": skipped,
        "primary_method": explainer.kind,
        "split": first,
        **asdict(primary.splits[first]),
        "methods": {name: asdict(m) for name, m in methods.items()},
    }
    write_summary(run_dir / "interp_summary.json", interp.units, summary)
    log_results_to_run(results, summary, interp, run_dir, logger)
    if primary.n_failed == primary.n_units:
        reasons = sorted({str(r) for r in primary.failed.values()})
        raise InterpFailed(
            f"all {primary.n_units} {interp.units} failed with explainer={explainer.kind}: {'; '.join(reasons)[:500]}"
        )
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
    atomic_write_json(path, existing)


def log_results_to_run(
    results: list[UnitResult], summary: dict, interp: InterpConfig, run_dir: Path, logger: Optional[LoggerConfig]
) -> None:
    """The explanations and scores as a table, each method's score histogram and means, to the SAE's W&B project
    (a CSV logger has nowhere to put a table: the scores are in the run directory's files)."""
    if logger is None or logger.kind != "wandb":
        return
    split = interp.splits[0]
    columns = [
        "units",
        "unit",
        "method",
        "status",
        "explanation",
        "simulator_method",
        "spearman",
        "pearson",
        "control_spearman",
        "control_pearson",
        "density",
        "reason",
    ]
    rows = []
    for r in results:
        scores = [r.score(role, split, metric) for role in ("own", "control") for metric in ("spearman", "pearson")]
        rows.append(
            [
                interp.units,
                r.unit,
                r.method,
                r.status,
                r.explanation or "",
                (r.own.simulator_method if r.own else None) or "",
                *[None if math.isnan(v) else v for v in scores],
                r.density,
                r.reason or "",
            ]
        )
    numbers, histograms = {}, {}
    for method in sorted({r.method for r in results}):
        vals = [r.score("own", split, "spearman") for r in results if r.method == method]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            histograms[f"interp/{interp.units}/{method}/spearman_hist"] = vals
        m = summary["methods"][method]["splits"][split]
        for metric in ("spearman", "pearson", "control_spearman", "control_pearson"):
            if m[metric]["mean"] is not None and not math.isnan(m[metric]["mean"]):
                numbers[f"interp/{interp.units}/{method}/{metric}_mean"] = m[metric]["mean"]
    run = build_logger(logger, run_dir, f"interp-{interp.units}", {"interp": asdict(interp)}, job_type="interp")
    log_results(run, numbers, histograms=histograms, tables={f"interp/{interp.units}/explanations": (columns, rows)})
    finish(run)
