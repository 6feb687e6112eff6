"""The layout's contract holds: pipeline stages import only the stages below them, the package never imports
the training callbacks, and there is no import cycle (pyproject.toml's [tool.importlinter], checked by the real
`lint-imports`); and a module that breaks it is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.runs import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """A copy of the package in which the lowest stage imports the highest one: the contract must fail on it."""
    for name in ("sae", "callbacks"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    checks = tmp_path / "sae" / "core" / "checks.py"
    checks.write_text(checks.read_text() + "\nfrom sae.sweeps import report  # noqa: E402,F401\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "Pipeline stages import only the stages below them BROKEN" in proc.stdout
    assert "sae.core.checks -> sae.sweeps.report" in proc.stdout
