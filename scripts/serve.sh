#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), then runs the server over Streamable HTTP on
# $HOST:$PORT (default 127.0.0.1:3000). Arguments are passed to server.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh" --env)"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" server.py "$@"
