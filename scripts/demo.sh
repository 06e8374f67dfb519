#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then run the quickstart notebook headless on
# the demo model (or on JUPYTER_QWEN_MODEL when that names a real Qwen3) and show its output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh .venv
exec .venv/bin/python -m jupyter_qwen demo notebooks/01_quickstart.ipynb "$@"
