"""The documentation: the site builds with no broken link, anchor or page; every result file carries the
stamp its table is shown with; the README stays a short guide with the two set-up commands a newcomer copies."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.runs import REPO

from bench.machine import describe
from bench.record import corpus_rows, harvest_note, numbers_in_order, run_row, seed_rows, with_differences, write_record
from bench.record import main as record_main

SET_UP_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/python train.py",
    "bash scripts/setup.sh --test && .venv/bin/python -m pytest",
)
README_MAX_LINES = 300


def _hook_module():
    spec = importlib.util.spec_from_file_location("results_tables", REPO / "docs" / "hooks" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _hook_module()


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def page_html(site: Path, page: str) -> str:
    """The built HTML of docs/<page>.md (mkdocs writes <page>/index.html; index.md is the site's root)."""
    return (site / ("index.html" if page == "index" else f"{page}/index.html")).read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("docs") / "site"
    proc = build_site(REPO, site)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def test_every_page_of_the_nav_is_built(site):
    pages = sorted(p.stem for p in (REPO / "docs").glob("*.md"))
    assert "index" in pages and "getting-started" in pages
    for page in pages:
        assert "<h1" in page_html(site, page), page


def test_each_table_marker_shows_its_record_or_the_command_that_measures_it(site):
    markers = [(md.stem, m) for md in sorted((REPO / "docs").glob("*.md")) for m in tables.MARKER.finditer(md.read_text())]
    assert markers, "the pages name no result tables"
    for page, marker in markers:
        page_html_text = page_html(site, page)
        path = REPO / "docs" / marker["path"]
        if path.exists():
            record = json.loads(path.read_text())
            assert tables.short_commit(record["commit"]) in page_html_text, (page, marker["path"])
            assert html.escape(record["machine"].split(";")[0], quote=False) in page_html_text, (page, marker["path"])
        else:
            command = html.escape(marker["command"], quote=False)
            assert f"Not measured yet: run <code>{command}</code>" in page_html_text, (page, marker["path"])


def test_a_broken_link_fails_the_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "docs", project / "docs")
    shutil.copy(REPO / "mkdocs.yml", project / "mkdocs.yml")
    page = project / "docs" / "training.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    proc = build_site(project, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stdout + proc.stderr


def test_readme_is_a_short_guide_with_the_two_set_up_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    for command in SET_UP_COMMANDS:
        assert command in lines, f"README.md must give `{command}` on a line of its own"
    ci = (REPO / ".ci" / "run").read_text()
    assert SET_UP_COMMANDS[1] in ci.splitlines()


def test_readme_links_reach_built_pages_and_anchors(site):
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert links
    for target, anchor in links:
        assert (REPO / target).exists(), target
        if target.endswith(".md") and anchor:
            assert f'id="{anchor}"' in page_html(site, Path(target).stem), f"{target}#{anchor}"


def test_every_result_file_has_its_stamp():
    files = sorted((REPO / "docs" / "results").glob("*.json"))
    assert files, "docs/results/ holds no result file"
    for path in files:
        record = tables.load_record(path)
        assert set(tables.STAMP_FIELDS) <= set(record)


@pytest.mark.parametrize("field", ["command", "commit", "machine", "date"])
def test_a_record_without_a_stamp_field_is_refused(field):
    record = {"command": "python bench/x.py", "commit": "a" * 40, "machine": "m", "date": "d", "rows": [{"a": 1}]}
    record[field] = ""
    with pytest.raises(tables.RecordError, match=field):
        tables.check_record(record, "r.json")


def test_rows_with_other_columns_are_refused():
    record = {"command": "c", "commit": "x", "machine": "m", "date": "d", "rows": [{"a": 1}, {"b": 2}]}
    with pytest.raises(tables.RecordError, match="rows \\[1\\]"):
        tables.check_record(record, "r.json")


def test_a_record_renders_as_its_table_under_its_stamp():
    record = {
        "title": "a title",
        "command": "python bench/x.py --record docs/results/x.json",
        "commit": "0123456789abcdef0123456789abcdef01234567-dirty",
        "machine": "CPU (2 CPUs); torch 2",
        "date": "2026-01-02T03:04:05Z",
        "rows": [{"n": 4608, "ratio": 2.5, "path": "a|b", "ok": True}, {"n": 512, "ratio": None, "path": "c", "ok": False}],
    }
    assert tables.render_record(record) == (
        "**a title**\n\n"
        "| n | ratio | path | ok |\n"
        "|---|---|---|---|\n"
        "| 4,608 | 2.5 | a\\|b | yes |\n"
        "| 512 | – | c | no |\n\n"
        "<small>Measured with `python bench/x.py --record docs/results/x.json` at commit `0123456789-dirty` "
        "on CPU (2 CPUs); torch 2, 2026-01-02T03:04:05Z.</small>"
    )


def test_a_missing_record_is_not_measured_yet_and_without_a_command_fails(tmp_path):
    page = "Before.\n\n<!-- table: results/x.json | python bench/x.py --record docs/results/x.json -->\n\nAfter.\n"
    rendered = tables.render_markers(page, tmp_path)
    assert "Not measured yet: run `python bench/x.py --record docs/results/x.json`" in rendered
    assert rendered.startswith("Before.") and rendered.endswith("After.\n")
    with pytest.raises(tables.RecordError, match="no such result file"):
        tables.render_markers("<!-- table: results/x.json -->\n", tmp_path)
    quoted = "The syntax is `<!-- table: results/x.json -->` in running text.\n"
    assert tables.render_markers(quoted, tmp_path) == quoted


def test_recorded_runs_are_listed_in_the_order_of_the_numbers_in_their_names():
    names = ["topk_x8_k=64_seed=0", "topk_x8_k=8_seed=1", "topk_x8_k=16_seed=0", "topk_x8_k=8_seed=0", "topk_x32_k=8_seed=0"]
    ordered = sorted((Path("sweep") / name for name in names), key=numbers_in_order)
    assert [p.name for p in ordered] == [
        "topk_x8_k=8_seed=0",
        "topk_x8_k=8_seed=1",
        "topk_x8_k=16_seed=0",
        "topk_x8_k=64_seed=0",
        "topk_x32_k=8_seed=0",
    ]


def test_bench_records_carry_the_stamp_the_docs_read(tmp_path):
    path = write_record(tmp_path / "r.json", "a title", [{"a": 1, "b": 0.5}], notes="a note")
    record = tables.load_record(path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert record["commit"] in (head, f"{head}-dirty")
    assert record["machine"].split(" (")[0] == describe().split(" (")[0]
    assert record["command"].startswith("python ")
    assert record["rows"] == [{"a": 1, "b": 0.5}] and record["notes"] == "a note"


def test_a_training_run_becomes_one_row_of_its_summary_and_evaluation(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    summary = {
        "run_name": "anthropic_2023_relu_x8-abc",
        "steps": 1953,
        "eval/l0": 50.04,
        "eval/explained_variance": 0.64213,
        "eval/reconstruction_score": 0.84012,
        "eval/kl_score": 0.75801,
        "eval/tokens": 2032.0,
        "density/dead_fraction": 0.0011,
        "density/ultralow_fraction": 0.0011,
        "train/loss": 1.0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = {"reconstruction_score": 0.88812, "kl_score": 0.79, "ce_tokens": 16256}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    row = run_row(run, evaluated=True)
    assert type(row["score tokens"]) is int  # a count logged as a float is shown as a count
    assert row == {
        "run": "anthropic_2023_relu_x8-abc",
        "steps": 1953,
        "held-out L0": 50.04,
        "expl. var.": 0.6421,
        "recon. score": 0.8401,
        "KL score": 0.758,
        "score tokens": 2032,
        "dead %": 0.11,
        "ultralow %": 0.11,
        "resampled": None,
        "recon. score (evaluate.py)": 0.8881,
        "KL score (evaluate.py)": 0.79,
        "CE tokens (evaluate.py)": 16256,
        "held-out L0 (evaluate.py)": None,
        "expl. var. (evaluate.py)": None,
    }


def test_an_evaluation_on_several_corpora_becomes_one_row_per_corpus(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"run_name": "relu_x8-abc"}))
    corpora = {
        "wiki (training)": {"reconstruction_score": 0.88812, "kl_score": 0.8, "l0": 50.2, "explained_variance": 0.64},
        "shakespeare": {
            "reconstruction_score": 0.678,
            "kl_score": 0.5,
            "l0": 87.0,
            "explained_variance": 0.39,
            "ce_tokens": 16256,
        },
    }
    (tmp_path / "eval" / "metrics_by_corpus.json").write_text(json.dumps({"sae_path": "x", "corpora": corpora}))
    rows = corpus_rows(tmp_path)
    assert [r["corpus"] for r in rows] == ["wiki (training)", "shakespeare"]
    assert rows[0] == {
        "run": "relu_x8-abc",
        "corpus": "wiki (training)",
        "recon. score": 0.8881,
        "KL score": 0.8,
        "held-out L0": 50.2,
        "expl. var.": 0.64,
        "CE tokens": None,
    }
    assert rows[1]["held-out L0"] == 87 and rows[1]["CE tokens"] == 16256


def test_the_note_says_whether_the_time_includes_harvesting_activations():
    assert harvest_note(0, 1) == "from an empty activation cache"
    assert harvest_note(2, 0) == "with activation caches harvested before"
    assert harvest_note(2, 1) == "harvesting 1 of its activation caches (others were harvested before)"


def test_runs_that_differ_by_seed_get_a_row_of_means_and_95_percent_intervals(tmp_path):
    def run(name: str, seed: int, l1: float) -> Path:
        run_dir = tmp_path / name
        run_dir.mkdir()
        identity = {"model": {"layer": 6}, "sae": {"seed": seed, "l1_coefficient": l1}}
        (run_dir / "run_config.json").write_text(json.dumps({"identity": identity}))
        return run_dir

    dirs = [run("a0", 0, 5.0), run("a1", 1, 5.0), run("a2", 2, 5.0), run("b0", 0, 1.0)]
    scores = [0.80, 0.82, 0.84, 0.5]
    seeds = [0, 1, 2, 0]
    rows = [
        {"run": f"relu_x8_seed={seed}-{d.name}", "recon. score": v, "steps": 10, "dead %": None, "interp. 95% low": v / 2}
        for d, v, seed in zip(dirs, scores, seeds, strict=True)
    ]
    # one setting with three seeds; the lone run of the other setting gets no row
    (row,) = seed_rows(dirs, rows)
    half = 4.302653 * 0.02 / 3**0.5  # t(0.975, 2) x sd / sqrt(n)
    assert row == {
        "run": "relu_x8: mean ± 95% interval over 3 seeds",
        "recon. score": f"0.8200 ± {half:.4f}",
        "steps": "10.0 ± 0.0",
        "dead %": None,
        "interp. 95% low": None,  # one run's own interval is not averaged over seeds
    }


def test_seeded_runs_on_several_corpora_get_a_row_of_means_per_corpus(tmp_path):
    dirs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"s{seed}"
        run_dir.mkdir()
        (run_dir / "run_config.json").write_text(json.dumps({"identity": {"sae": {"seed": seed}}}))
        dirs.append(run_dir)
    rows = [
        {"run": f"relu_x8_seed={seed}-h{seed}", "corpus": corpus, "recon. score": score}
        for seed, per_corpus in ((0, {"wiki": 0.9, "code": 0.5}), (1, {"wiki": 0.8, "code": 0.7}))
        for corpus, score in per_corpus.items()
    ]
    row_dirs = [dirs[0], dirs[0], dirs[1], dirs[1]]
    wiki, code = seed_rows(row_dirs, rows)
    half = 12.706205 * (0.1 / 2**0.5) / 2**0.5  # t(0.975, 1) x sd / sqrt(n), sd of two values d apart = d / sqrt(2)
    assert wiki == {"run": "relu_x8: mean ± 95% interval over 2 seeds", "corpus": "wiki", "recon. score": f"0.8500 ± {half:.4f}"}
    assert code["corpus"] == "code" and code["recon. score"] == f"0.6000 ± {2 * half:.4f}"


def test_runs_of_one_name_that_differ_in_unnamed_settings_say_how_and_get_their_own_means(tmp_path):
    def run(seed: int, data: dict, threshold: float = 1.0) -> Path:
        run_dir = tmp_path / f"{data.get('name') or data['source']}{seed}-{threshold}"
        run_dir.mkdir()
        identity = {"data": data, "sae": {"seed": seed, "settings": {"initial_threshold": threshold}}}
        (run_dir / "run_config.json").write_text(json.dumps({"identity": identity}))
        return run_dir

    wiki, mixed = {"source": "wiki_offline", "name": None}, {"source": "packaged", "name": "mixed"}
    dirs = [run(0, mixed), run(0, wiki), run(1, mixed), run(1, wiki)]  # run names sort by hash, not by data
    rows = [{"run": f"relu_x8_seed={i // 2}-h{i}", "recon. score": score} for i, score in enumerate([0.7, 0.9, 0.8, 0.8])]
    row_dirs, labelled = with_differences(dirs, rows)
    on_mixed, on_wiki = "data.name=mixed, data.source=packaged", "data.name=None, data.source=wiki_offline"
    assert [(row["run"], row["differs in"]) for row in labelled] == [
        ("relu_x8_seed=0-h1", on_wiki),
        ("relu_x8_seed=1-h3", on_wiki),
        ("relu_x8_seed=0-h0", on_mixed),
        ("relu_x8_seed=1-h2", on_mixed),
    ]
    assert list(labelled[0]) == ["run", "differs in", "recon. score"]
    means = {row["differs in"]: row["recon. score"] for row in seed_rows(row_dirs, labelled)}
    assert means[on_mixed].startswith("0.7500 ± ") and means[on_wiki].startswith("0.8500 ± ")
    same = dirs[0::2]  # runs on one corpus: no column
    assert with_differences(same, rows[0::2]) == (same, rows[0::2])
    # A setting the name leaves out, swept on one corpus (JumpReLU's starting threshold).
    dirs = [run(0, wiki, 1.3), run(0, wiki, 2.0)]
    _, labelled = with_differences(dirs, rows[:2])
    assert [row["differs in"] for row in labelled] == ["sae.settings.initial_threshold=1.3", "sae.settings.initial_threshold=2"]


def test_an_evaluation_with_interpretability_and_absorption_adds_their_columns(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"run_name": "topk_x8-abc"}))
    metrics = {"reconstruction_score": 0.85, "absorption_absorption_fraction": 0.0412, "absorption_full_absorption_rate": 0.02}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    interp = {"spearman": {"mean": 0.41234, "ci95": [0.35, 0.47], "n_units": 32}, "control_spearman": {"mean": 0.0512}}
    (tmp_path / "eval" / "interp_summary.json").write_text(json.dumps({"features": interp}))
    row = run_row(tmp_path, evaluated=True)
    assert row["absorption %"] == 4.12 and row["full absorption rate"] == 0.02 and row["letter probe F1"] is None
    assert (row["interp."], row["interp. 95% low"], row["interp. 95% high"], row["control"]) == (0.4123, 0.35, 0.47, 0.0512)
    bare = tmp_path / "bare"
    (bare / "eval").mkdir(parents=True)
    (bare / "summary.json").write_text(json.dumps({"run_name": "relu"}))
    (bare / "eval" / "metrics.json").write_text(json.dumps({"reconstruction_score": 0.8}))
    assert not {"absorption %", "interp."} & set(run_row(bare, evaluated=True))  # columns only where measured


@pytest.mark.parametrize("argv", [["out.json"], ["out.json", "--", "evaluate.py", "sae_path=x"]])
def test_recording_runs_needs_a_train_py_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        record_main(argv)
    assert exit_info.value.code == 2
    assert "-- train.py" in capsys.readouterr().err
