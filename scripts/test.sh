#!/usr/bin/env bash
# Sets up, then runs the whole test suite (about 10 minutes on an idle 2-core machine, plus setup).
# Arguments go to pytest: `bash scripts/test.sh -m "not system"` is the everyday tier (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
