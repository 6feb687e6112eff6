"""The feature browser in a real headless browser (Debian's chromium driven by Playwright) against
the real local server, on the site of a random 4,608-feature SAE (the statistics and the site
writer are real; the activations are random, so no language model runs here)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from support.dashboard import write_synthetic_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extras)")
if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed (scripts/setup.sh --test installs it as root: apt-get install chromium)",
        allow_module_level=True,
    )

N_FEATURES = 4608
INTERACTIVE_BUDGET_S = 15.0  # generous: 2 shared CPU cores; the measured time is printed


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    site_dir, indices, cfg, tok = write_synthetic_site(root, n_features=N_FEATURES)
    return root, site_dir, indices, cfg, tok


@pytest.fixture(scope="module")
def server(site):
    from sae.dashboard.server import DashboardServer

    root, site_dir, *_ = site
    srv = DashboardServer(site_dir, root / "ratings.sqlite", "127.0.0.1", 0, blind_per_kind=3, seed=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    return errors


def table_units(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#units-table tbody tr", "rows => rows.map(r => r.dataset.unit)")]


def test_index_feature_page_and_blind_rating(site, server, browser):
    root, site_dir, indices, cfg, tok = site
    ix = indices["features"]
    page = browser.new_page()
    errors = watch_errors(page)

    start = time.perf_counter()
    page.goto(server.url + "#/k/features")
    page.wait_for_selector("body[data-ready=index] #units-table tbody tr")
    interactive = time.perf_counter() - start
    print(f"index of {N_FEATURES} features interactive after {interactive:.2f} s")
    assert interactive < INTERACTIVE_BUDGET_S
    assert page.inner_text("h2").startswith(f"{N_FEATURES:,} features")
    assert len(table_units(page)) == 100  # paged

    # default order: density, highest first
    by_density = sorted(range(N_FEATURES), key=lambda u: (-ix["density"][u], u))
    assert table_units(page) == by_density[:100]
    # sort by max activation: descending, then ascending on a second click
    page.click("th[data-key=max_activation]")
    assert table_units(page)[:20] == sorted(range(N_FEATURES), key=lambda u: (-ix["max_activation"][u], u))[:20]
    page.click("th[data-key=max_activation]")
    assert table_units(page)[:20] == sorted(range(N_FEATURES), key=lambda u: (ix["max_activation"][u], u))[:20]
    page.click("#next")
    assert table_units(page)[:5] == sorted(range(N_FEATURES), key=lambda u: (ix["max_activation"][u], u))[100:105]

    # search by token: exactly the features with that token among their top tokens
    shown_as = lambda t: tok.decode([t]).replace("\n", "⏎").lower()
    text = next(shown_as(t) for t in ix["top_tokens"][by_density[0]] if len(shown_as(t).strip()) >= 2)
    expected = [u for u, ts in enumerate(ix["top_tokens"]) if any(text in shown_as(t) for t in ts)]
    page.fill("#filter", text)
    assert f"of {len(expected)}" in page.inner_text(".pager")
    assert table_units(page) == sorted(expected, key=lambda u: (ix["max_activation"][u], u))[:100]
    page.click("th[data-key=density]")
    assert by_density[0] in table_units(page)

    # open a feature: shaded tokens with their values, the logit table
    unit = by_density[0]
    page.click(f"#units-table a[href='#/u/features/{unit}']")
    page.wait_for_selector("body[data-ready=unit]")
    assert page.inner_text("h2") == f"Feature {unit}"
    shaded = page.eval_on_selector_all("#top-contexts .tok.on", "els => els.map(e => [e.style.backgroundColor, e.title])")
    assert shaded and all("255, 112, 0" in bg for bg, _ in shaded)
    records = page.evaluate(f"DASH.state.chunks['features:{unit // cfg.part_units}']")[unit % cfg.part_units]["records"]
    expected_values = sorted(a for r in records if r["group"] == "top" for a in r["acts"] if a > 0)
    assert sorted(float(title.rsplit(": ", 1)[1]) for _, title in shaded) == pytest.approx(expected_values)
    strongest = max(records[0]["acts"])
    assert f": {strongest}" in "".join(t for _, t in shaded)
    logit_rows = page.eval_on_selector_all("#logit-promoted tbody tr", "rows => rows.length")
    assert logit_rows == cfg.n_logits

    # rate it (not blind) through the real server
    page.fill("#rater", "tester")
    for c, v in (("confidence", 4), ("activations", 3), ("logits", 2), ("specificity", 5)):
        page.check(f"#rating-form input[name={c}][value='{v}']")
    page.click("#save-rating")
    page.wait_for_selector("#rating-form .status:has-text('saved')")
    db = sqlite3.connect(root / "ratings.sqlite")
    row = db.execute(
        "SELECT kind, unit, confidence, activations, logits, specificity, blind FROM ratings WHERE rater='tester'"
    ).fetchone()
    assert row == ("features", unit, 4, 3, 2, 5, 0)

    # blind mode: the unit's identity shows only after saving, and matches the stored row
    page.goto(server.url + "#/blind")
    page.fill("#blind-rater", "blind-tester")
    page.click("#blind-start")
    page.wait_for_selector("body[data-ready=blind]")
    assert page.inner_text("h2").startswith("Blind unit 1 of 6")
    assert "Feature" not in page.inner_text("main > h2") and "Neuron" not in page.inner_text("main > h2")
    for c in ("confidence", "activations", "logits", "specificity"):
        page.check(f"#rating-form input[name={c}][value='1']")
    page.click("#save-rating")
    reveal = page.wait_for_selector("#reveal").inner_text()
    rid, kind, number = db.execute("SELECT id, kind, unit FROM ratings WHERE rater='blind-tester' AND blind=1").fetchone()
    assert f"#{rid}" in reveal and f"{'neuron' if kind == 'neurons' else 'feature'} {number}" in reveal
    queue = db.execute("SELECT kind, unit, rating_id FROM blind_queue WHERE rater='blind-tester' ORDER BY position").fetchall()
    assert queue[0] == (kind, number, rid) and {k for k, _, _ in queue} == {"features", "neurons"}
    page.click("#blind-next")
    page.wait_for_selector("body[data-ready=blind] h2:has-text('Blind unit 2 of 6')")
    db.close()

    assert errors == []
