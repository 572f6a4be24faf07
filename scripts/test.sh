#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh --test), then runs the whole test suite against
# real Podman and real MCP clients. Arguments are passed to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh" --test --env)"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
