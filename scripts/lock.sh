#!/usr/bin/env bash
# Refreshes requirements-lock.txt: resolves the newest versions pyproject.toml allows in a throw-away venv
# (CPU torch 2.13.0 first, as setup.sh does), then freezes them. Run the suite on the new lock before committing:
#   bash scripts/lock.sh && rm -rf .venv && bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "torch==2.13.0"
"$tmp/venv/bin/python" -m pip install -q ".[dev,flower,tracking]"
{
  echo "# The environment the test suite passed with: exact versions, installed by scripts/setup.sh as constraints."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" --version); do not edit by hand."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(fedctl|pip|setuptools|wheel)([=@ ]|$)' \
    | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > requirements-lock.txt.new
mv requirements-lock.txt.new requirements-lock.txt
echo "wrote requirements-lock.txt ($(grep -vc '^#' requirements-lock.txt) packages)"
