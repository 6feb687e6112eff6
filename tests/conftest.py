"""Fixtures shared by every test, and the switch that makes the tests of optional parts required.

A per-session activation cache, so tests never read a user's cache. The embedded model is converted once
into the user cache (~/.cache/sae/models, or $SAE_CACHE_DIR).

Some tests need a part that `scripts/setup.sh --test` installs only where it can (as root on Debian: Slurm
and chromium) or that may be missing from a hand-made venv (the llama.cpp server, the SAELens venv);
without it they skip, naming the install command. `SAE_TESTS_REQUIRE=browser,slurm,saelens,llama` (CI
sets it in .ci/run) names parts that must be there: a skip of one of their tests is then a failure, with
the skip's reason. Other skips (the CUDA tests on a machine without a GPU) stay skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_VARIABLE = "SAE_TESTS_REQUIRE"
# Each optional part and its tests, as node-id prefixes (a file, or a file::test).
PARTS = {
    "browser": ("tests/dashboard/test_dashboard_browser.py",),
    "slurm": ("tests/sweeps/test_sweep_slurm.py",),
    "saelens": ("tests/export/test_saelens_compat.py",),
    "llama": ("tests/interp/test_interp_e2e.py::test_openai_backend_against_llama_cpp_server",),
}
REQUIRED = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def activation_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("activation-cache")


def pytest_configure(config: pytest.Config) -> None:
    names = [n.strip() for n in os.environ.get(REQUIRE_VARIABLE, "").split(",") if n.strip()]
    unknown = sorted(set(names) - PARTS.keys())
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_VARIABLE} names {unknown}; the parts are {', '.join(PARTS)}.")
    for name in names:
        for prefix in PARTS[name]:
            if not (config.rootpath / prefix.split("::")[0]).is_file():
                raise pytest.UsageError(f"{REQUIRE_VARIABLE}: the tests of '{name}' are not at {prefix}.")
    config.stash[REQUIRED] = {name: PARTS[name] for name in names}


def pytest_report_header(config: pytest.Config) -> str | None:
    required = config.stash.get(REQUIRED, {})
    return f"{REQUIRE_VARIABLE}: {', '.join(required)} (their skips fail)" if required else None


def required_part(config: pytest.Config, nodeid: str) -> str | None:
    """The required part whose tests include `nodeid`, if any."""
    for name, prefixes in config.stash.get(REQUIRED, {}).items():
        if any(nodeid == p or nodeid.startswith((p + "::", p + "[")) for p in prefixes):
            return name
    return None


def skip_reason(longrepr) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def failure_text(part: str, reason: str) -> str:
    return f"{REQUIRE_VARIABLE} requires '{part}', but its test skipped: {reason}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A required test that was renamed must not drop out unseen: its file was collected, so it must be there."""
    ids = [item.nodeid for item in items]
    for name, prefixes in config.stash.get(REQUIRED, {}).items():
        for prefix in prefixes:
            path = prefix.split("::")[0]
            collected = [i for i in ids if i.startswith(path + "::")]
            if collected and not any(i == prefix or i.startswith((prefix + "::", prefix + "[")) for i in collected):
                raise pytest.UsageError(f"{REQUIRE_VARIABLE}: no test of '{name}' at {prefix}.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        part = required_part(item.config, item.nodeid)
        if part:
            report.outcome = "failed"
            report.longrepr = failure_text(part, skip_reason(report.longrepr))
    return report


class SkippedRequiredModule(pytest.Item):
    """Stands for a required test module that skipped as a whole while it was imported."""

    def __init__(self, *, reason: str, **kwargs):
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        pytest.fail(self.reason, pytrace=False)

    def reportinfo(self):
        return self.path, None, self.name


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and isinstance(collector, pytest.Module):
        part = required_part(collector.config, collector.nodeid)
        if part:
            reason = failure_text(part, skip_reason(report.longrepr))
            item = SkippedRequiredModule.from_parent(collector, name="module_skipped", reason=reason)
            return pytest.CollectReport(collector.nodeid, "passed", None, [item])
    return report
