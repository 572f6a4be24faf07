#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh --test), then runs the whole test suite against
# real Podman and real MCP clients. Arguments are passed to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh" --test --env)"
cd "$ROOT"
# The whole suite goes through Podman's REST API (SANDBOX_PODMAN_API's default). Then, when the suite
# was asked for whole (no test paths among the arguments), the modules that make, list, adopt and
# remove sandboxes run once more through Podman's CLI alone, the path SANDBOX_PODMAN_API=off keeps.
CLI_PATH_TESTS=(tests/integration/test_tools.py tests/integration/test_lifecycle.py)
status=0
"$ROOT/.venv/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 0 ] && [ -z "${SANDBOX_PODMAN_API:-}" ] && ! printf '%s\n' "$@" | grep -q '^tests'; then
  echo "[test] once more through Podman's CLI alone (SANDBOX_PODMAN_API=off): ${CLI_PATH_TESTS[*]}" >&2
  SANDBOX_PODMAN_API=off "$ROOT/.venv/bin/python" -m pytest "$@" "${CLI_PATH_TESTS[@]}" || status=$?
fi
exit "$status"
