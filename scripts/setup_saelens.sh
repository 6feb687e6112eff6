#!/usr/bin/env bash
# A separate virtual environment with SAELens (./.venv-saelens), used to check that exported SAEs load
# in SAELens itself and to benchmark its trainer. SAELens pins TransformerLens 3, which cannot share
# a venv with this project's TransformerLens 4. torch is installed first so pip keeps the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${SAELENS_VENV:-.venv-saelens}
SAE_LENS_VERSION=${SAE_LENS_VERSION:-6.54.12}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

pip install -q --upgrade pip
pip install -q 'torch>=2.4,<2.14'
pip install -q "sae-lens==$SAE_LENS_VERSION" 'torch>=2.4,<2.14'
"$VENV/bin/python" -c "import sae_lens, torch; print('sae_lens', sae_lens.__version__, 'torch', torch.__version__)"
