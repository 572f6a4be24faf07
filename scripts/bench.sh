#!/usr/bin/env bash
# Sets up what is missing, then runs the benchmark against the raw podman CLI (bench/bench.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh" --env)"
exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" "$@"
