#!/usr/bin/env bash
# Sets up, then runs the main job on the built-in demo data: federated Mamba2, 4 clients, 12 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rm -rf runs/demo
fedctl train mamba --config mamba_tiny --out runs/demo "$@"
fedctl inspect ckpt runs/demo/checkpoints/round_012.pt --limit 8
