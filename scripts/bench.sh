#!/usr/bin/env bash
# Sets up what is missing, then runs the benchmark against the raw podman CLI (bench/bench.py);
# with --profile-create, where an unpooled create's time goes (bench/profile_create.py);
# with --clients, the model round trips for a long command per agent framework (bench/clients.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--clients" ]; then
  shift
  eval "$("$ROOT/scripts/setup.sh" --test --env)"
  exec "$ROOT/.venv/bin/python" "$ROOT/bench/clients.py" "$@"
fi
eval "$("$ROOT/scripts/setup.sh" --env)"
if [ "${1:-}" = "--profile-create" ]; then
  shift
  exec "$ROOT/.venv/bin/python" "$ROOT/bench/profile_create.py" "$@"
fi
exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" "$@"
