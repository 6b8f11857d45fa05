#!/usr/bin/env bash
# Sets up, then runs the whole test suite (about 1.5 minutes on 2 cores, plus setup).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
