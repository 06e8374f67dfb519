#!/usr/bin/env bash
# Make (or refresh) the virtual environment $1 (default .venv) with jupyter_qwen and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
PIP_CONSTRAINT="$PWD/.ci/constraints.txt" "$venv/bin/python" -m pip install -q \
  -c .ci/constraints.txt torch==2.13.0 -e ".[test]"
