#!/usr/bin/env bash
# A separate virtual environment with SAELens and EleutherAI's sparsify (./.venv-saelens), used to check
# that exported SAEs load in those libraries and to benchmark SAELens's trainer (bench/compare_saelens.py).
# SAELens pins TransformerLens 3, which cannot share a venv with this project's TransformerLens 4.
# torch is installed first so that pip keeps the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${SAELENS_VENV:-.venv-saelens}
SAE_LENS_VERSION=${SAE_LENS_VERSION:-6.54.12}
SPARSIFY_VERSION=${SPARSIFY_VERSION:-1.3.3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

pip install -q --upgrade pip
pip install -q 'torch>=2.4,<2.14'
pip install -q "sae-lens==$SAE_LENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION" 'torch>=2.4,<2.14'
"$VENV/bin/python" -c "import sae_lens, sparsify, torch
print('sae_lens', sae_lens.__version__, 'sparsify', sparsify.__version__, 'torch', torch.__version__)"
