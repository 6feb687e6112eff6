"""The feature browser in a real headless browser (Debian's chromium driven by Playwright) against
the real local server, on the site of a random 4,608-feature SAE (the statistics and the site
writer are real; the activations are random, so no language model runs here)."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- hostile data renders as text

PAYLOADS = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    '"><svg onload="window.__pwned=\'svg\'"></svg>',
    "<script>window.__pwned='script'</script>",
    '" onmouseover="window.__pwned=\'attr\'" x="',
    "<iframe src=\"javascript:top.__pwned='iframe'\"></iframe>",
    "</script><script>window.__pwned='breakout'</script>",
    "<img src=x onerror=alert(1)>",
]
HOSTILE_HOOK = "blocks.3.mlp.hook_post"


def rewrite(path: Path, fn: str, edit) -> None:
    """Edit a data file the site writer wrote (DASH.fn(args...)), writing it back the same way."""
    from sae.dashboard.site import js_call, parse_js_call

    args = parse_js_call(path.read_text())
    edit(args)
    path.write_text(js_call(fn, *args))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A synthetic site whose token strings, explanation, sampled text and summary are markup and
    script payloads; one unit without logit weights (its hook has no direct path)."""
    root = tmp_path_factory.mktemp("hostile-site")
    site_dir, indices, cfg, _ = write_synthetic_site(root, n_features=64, d=16, n_contexts=30, part_units=64)
    data = site_dir / "data"
    ix = indices["features"]
    unit = max(range(64), key=lambda u: (ix["fired_contexts"][u], -u))
    plain = next(u for u in range(64) if u != unit and ix["density"][u] > 0)
    chunk = {}

    def edit_chunk(args):
        page = args[2][unit]
        tokens = sorted({t for r in page["records"] for t in r["tokens"]} | set(ix["top_tokens"][unit]))
        chunk["tokens"] = tokens
        page["interp"] = {"explanation": PAYLOADS[0], "method": PAYLOADS[1], "split": "top_and_random", "spearman": 0.5}
        page["steering"] = {
            "multiple": 5,
            "value": 1.0,
            "samples": [{"prompt": p, "unclamped": p, "pinned": p} for p in PAYLOADS],
        }
        page["logits"] = {"promoted": [[t, 1.0] for t in tokens[:5]], "suppressed": [[t, -1.0] for t in tokens[5:10]]}
        args[2][plain]["logits"] = None

    rewrite(data / "features" / "chunk_0000.js", "chunk", edit_chunk)
    rewrite(
        data / "vocab.js",
        "vocab",
        lambda a: a[0].update({str(t): PAYLOADS[i % len(PAYLOADS)] for i, t in enumerate(chunk["tokens"])}),
    )
    rewrite(data / "features" / "index.js", "index", lambda a: a[1]["explanation"].update({str(unit): PAYLOADS[0]}))

    def edit_summary(args):
        args[0].update({"sae_path": PAYLOADS[2], "hook": HOSTILE_HOOK})
        args[0]["metrics"][PAYLOADS[3]] = 1.0

    rewrite(data / "summary.js", "summary", edit_summary)
    from sae.dashboard.server import DashboardServer

    srv = DashboardServer(site_dir, root / "ratings.sqlite", "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, site_dir, unit, plain
    srv.shutdown()
    srv.server_close()


INJECTION_PROBE = """() => ({
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  injected: [...document.querySelectorAll("img, iframe, object, embed, [onerror], [onload], [onmouseover], [onclick], [srcdoc]")]
    .map((e) => e.outerHTML.slice(0, 120)),
  scripts: [...document.scripts].map((s) => s.getAttribute("src")),
  inSvg: [...document.querySelectorAll("svg *")].map((e) => e.tagName).filter((t) => !["rect", "text", "title"].includes(t)),
})"""


def assert_nothing_ran(page, dialogs):
    probe = page.evaluate(INJECTION_PROBE)
    assert probe["pwned"] is None and dialogs == []
    assert probe["injected"] == [] and probe["inSvg"] == []
    assert all(s == "app.js" or (s or "").startswith("data/") for s in probe["scripts"]), probe["scripts"]


@pytest.mark.parametrize("served", [True, False], ids=["server", "file"])
def test_hostile_tokens_and_explanations_render_as_text(hostile, browser, served):
    srv, site_dir, unit, plain = hostile
    base = srv.url if served else (site_dir / "index.html").as_uri()
    page = browser.new_page()
    errors = watch_errors(page)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(base + "#/k/features")
    page.wait_for_selector("body[data-ready=index] #units-table tbody tr")
    assert PAYLOADS[2] in page.inner_text("main .note")  # the SAE path, as text
    assert PAYLOADS[3] in page.inner_text("#metrics")
    page.fill("#filter", "onerror")  # the explanation and the token strings are searchable text
    row = page.wait_for_selector(f"#units-table tr[data-unit='{unit}']")
    text = row.inner_text()
    assert PAYLOADS[0] in text and any(p in text for p in PAYLOADS[1:])
    row.hover()
    page.hover(f"#units-table tr[data-unit='{unit}'] .tokcell")
    assert_nothing_ran(page, dialogs)

    page.goto(base + f"#/u/features/{unit}")
    page.wait_for_selector("body[data-ready=unit]")
    assert page.inner_text("#explanation").startswith("Explanation: " + PAYLOADS[0])
    assert PAYLOADS[1] in page.inner_text("#explanation")
    shown = page.eval_on_selector_all("#top-contexts .tok", "els => els.map(e => [e.textContent, e.title])")
    assert {t for t, _ in shown} <= set(PAYLOADS) and len({t for t, _ in shown}) > 1
    assert all(title.startswith(json.dumps(t, ensure_ascii=False)) for t, title in shown)
    for i in range(min(5, len(shown))):
        page.hover(f"#top-contexts .tok >> nth={i}")
    assert set(page.eval_on_selector_all("#logit-promoted .tokcell", "els => els.map(e => e.textContent)")) <= set(PAYLOADS)
    assert all(p in page.inner_text("#steering") for p in PAYLOADS)
    assert_nothing_ran(page, dialogs)

    # a unit without logit weights says why, naming the hook
    page.goto(base + f"#/u/features/{plain}")
    page.wait_for_selector(f"body[data-ready=unit] h2:has-text('Feature {plain}')")
    note = page.inner_text("#logits-unavailable")
    assert note.startswith("not available") and HOSTILE_HOOK in note
    assert page.query_selector("#logit-promoted") is None
    assert_nothing_ran(page, dialogs)
    assert errors == []
    page.close()
