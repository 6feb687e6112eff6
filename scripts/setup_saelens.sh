#!/usr/bin/env bash
# A separate virtual environment with SAELens and EleutherAI's sparsify (./.venv-saelens), used to check
# that exported SAEs load in those libraries (tests/export/test_saelens_compat.py; `scripts/setup.sh --test`
# runs this script) and to benchmark SAELens's trainer (bench/compare_saelens.py).
# SAELens pins TransformerLens 3, which cannot share a venv with this project's TransformerLens 4.
# torch is installed first so that pip keeps the CPU build. A venv that already holds the pinned versions
# is only checked.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${SAELENS_VENV:-.venv-saelens}
SAE_LENS_VERSION=${SAE_LENS_VERSION:-6.54.12}
SPARSIFY_VERSION=${SPARSIFY_VERSION:-1.3.3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" - "$SAE_LENS_VERSION" "$SPARSIFY_VERSION" 2>/dev/null <<'EOF'; then
import importlib.metadata as md, sys
sys.exit([md.version("sae-lens"), md.version("eai-sparsify")] != sys.argv[1:])
EOF
  pip install -q --upgrade pip
  pip install -q 'torch>=2.4,<2.14'
  pip install -q "sae-lens==$SAE_LENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION" 'torch>=2.4,<2.14'
fi
"$VENV/bin/python" -c "import sae_lens, sparsify, torch
print('$VENV: sae_lens', sae_lens.__version__, 'sparsify', sparsify.__version__, 'torch', torch.__version__)"
