#!/usr/bin/env bash
# Creates .venv with CPU torch 2.13.0 first (so nothing pulls a CUDA build), then fedctl and its extras at the
# exact versions of requirements-lock.txt (the environment the suite passed with; scripts/lock.sh refreshes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -c requirements-lock.txt -e ".[dev,flower,tracking]"
# Test-only: flwr-datasets' partitioners are the reference the quantity-skew tests compare against. Every release
# pins datasets<5 while the lock has 5.2.0; the partitioners run unchanged on it, so install without its pins.
python -m pip install -q --no-deps "flwr-datasets==0.6.1" "seaborn==0.13.2"
