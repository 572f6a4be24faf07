#!/usr/bin/env bash
# Sets up everything the server needs, idempotently:
#   - Podman, an OCI runtime, catatonit (for --init) and busybox-static, from apt when missing;
#   - runc as Podman's runtime when the default one cannot start containers here;
#   - the sandbox image: $SANDBOX_IMAGE (default Alpine) from its registry, or, when no
#     registry can provide the default image, a local busybox image built on the spot;
#   - a Python virtual environment in .venv with the project installed;
#   - with --test: the test extras; MCP Inspector's CLI, the TypeScript SDK, mcp-remote and oidc-provider (npm);
#     and the agent frameworks in .venv-clients (tests/e2e/frameworks/requirements.txt).
# Progress goes to stderr. With --env, the last line on stdout is an `export SANDBOX_IMAGE=...`
# for the caller to eval.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEFAULT_IMAGE=docker.io/library/alpine:3
OFFLINE_IMAGE=localhost/mcp-sandbox-busybox:latest
WANT_TEST=0
PRINT_ENV=0
for arg in "$@"; do
  case "$arg" in
    --test) WANT_TEST=1 ;;
    --env) PRINT_ENV=1 ;;
    *) echo "setup.sh: unknown argument $arg (use --test, --env)" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else say "need root to run: $*"; return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || { say "missing $*, and this is not a Debian-like system: install them and run again"; exit 1; }
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# ---- system packages
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
{ command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ]; } || missing+=(catatonit)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)  # each sandbox's own disk (sandbox/disks.py)
if [ "$WANT_TEST" -eq 1 ]; then
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  command -v runsc >/dev/null 2>&1 || missing+=(runsc)  # gVisor, tested as SANDBOX_RUNTIME
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)  # the deployment test's base image
  command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)  # rootless Podman, in the limits test
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)  # the in-sandbox shell library's linter
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the console's browser tests (Playwright drives it)
  [ -e /usr/lib/x86_64-linux-gnu/libssl.a ] || [ -e /usr/lib/aarch64-linux-gnu/libssl.a ] || missing+=(libssl-dev)  # the secrets tests' static HTTPS client
fi
python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PYTHON=${PYTHON:-python3}
python_ok "$PYTHON" || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
python_ok "$PYTHON" || { say "Python 3.11 or newer with venv is required (found: $("$PYTHON" --version 2>&1))"; exit 1; }

# ---- the sandbox image
IMAGE=${SANDBOX_IMAGE:-$DEFAULT_IMAGE}
if ! podman image exists "$IMAGE" 2>/dev/null; then
  say "pulling $IMAGE"
  if ! podman pull -q "$IMAGE" >/dev/null 2>/tmp/mcp-sandbox-pull.err; then
    if [ "$IMAGE" = "$DEFAULT_IMAGE" ]; then
      say "no registry could provide $IMAGE ($(tail -n 1 /tmp/mcp-sandbox-pull.err))"
      if ! podman image exists "$OFFLINE_IMAGE"; then
        say "building a local busybox sandbox image instead: $OFFLINE_IMAGE"
        sh "$ROOT/scripts/make-offline-image.sh" "$OFFLINE_IMAGE" >/dev/null
      fi
      IMAGE=$OFFLINE_IMAGE
      say "NOTE: sandboxes will use $IMAGE (busybox tools, no package manager), not Alpine"
    else
      say "could not pull SANDBOX_IMAGE=$IMAGE: $(tail -n 1 /tmp/mcp-sandbox-pull.err)"
      exit 1
    fi
  fi
fi

# ---- the sandbox agent (agent/sandbox-agent.c): a small static binary copied into every sandbox
AGENT="$ROOT/build/sandbox-agent"
if [ ! -x "$AGENT" ] || [ "$ROOT/agent/sandbox-agent.c" -nt "$AGENT" ]; then
  say "building $AGENT"
  mkdir -p "$ROOT/build"
  musl-gcc -static -O2 -o "$AGENT" "$ROOT/agent/sandbox-agent.c" 2>/dev/null \
    || gcc -static -O2 -o "$AGENT" "$ROOT/agent/sandbox-agent.c"
  strip "$AGENT" 2>/dev/null || true
fi

# ---- a runtime that works on this host, with the limits the server uses
# (the limits as mcp_container_sandbox/sandbox/contract.py states them, read without the project's dependencies)
read -r -a limit_flags < <("$PYTHON" -c 'import runpy, sys; c = runpy.run_path(sys.argv[1])
print(" ".join(c["LIMIT_FLAGS"] + c["ULIMIT_FLAGS"]))' "$ROOT/mcp_container_sandbox/sandbox/contract.py")
[ "${#limit_flags[@]}" -gt 0 ] || { say "could not read the limits from mcp_container_sandbox/sandbox/contract.py"; exit 1; }
probe() {
  podman run --rm --init "${limit_flags[@]}" --entrypoint /bin/sh "$IMAGE" -c 'echo ok' 2>&1
}
if ! out=$(probe); then
  if printf '%s' "$out" | grep -qi 'cgroup' && command -v runc >/dev/null 2>&1; then
    say "the default OCI runtime fails here ($(printf '%s' "$out" | tail -n 1)); configuring runc"
    as_root mkdir -p /etc/containers/containers.conf.d
    printf '[engine]\nruntime = "runc"\n' | as_root tee /etc/containers/containers.conf.d/50-mcp-sandbox-runc.conf >/dev/null
    out=$(probe) || { say "Podman still cannot start a sandbox: $out"; exit 1; }
  else
    say "Podman cannot start a sandbox: $out"; exit 1
  fi
fi
say "Podman $(podman version --format '{{.Client.Version}}') starts sandboxes from $IMAGE"

# ---- room for thousands of sandboxes: Podman takes a lock for each container from a fixed number
# (num_locks, 2,048 by default: past about 2,000 containers it refuses new ones). 16,384 of them;
# the locks' shared memory is made anew by `podman system renumber`, which must run while no other
# Podman process does. The setting is the whole host's: a user's rootless Podman that has made its
# locks already would need its own renumber, so then it is left as it is.
LOCKS_CONF=/etc/containers/containers.conf.d/50-mcp-sandbox-locks.conf
if [ ! -f "$LOCKS_CONF" ]; then
  if pgrep -x podman >/dev/null 2>&1 || compgen -G '/dev/shm/libpod_rootless_lock_*' >/dev/null; then
    say "NOTE: Podman is busy or used rootless here, so its lock count (num_locks) stays as it is: about 2,000 containers at most (docs/deployment.md says how to raise it)"
  else
    say "letting Podman keep up to 16384 containers (num_locks in $LOCKS_CONF)"
    as_root mkdir -p /etc/containers/containers.conf.d
    printf '[engine]\nnum_locks = 16384\n' | as_root tee "$LOCKS_CONF" >/dev/null
    as_root rm -f /dev/shm/libpod_lock
    as_root podman system renumber >&2
  fi
fi

# ---- Python environment
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating $ROOT/.venv"
  rm -rf "$ROOT/.venv"  # a dangling link or a half-made folder
  "$PYTHON" -m venv "$ROOT/.venv"
fi
extras=""
[ "$WANT_TEST" -eq 1 ] && extras="[test]"
stamp="$ROOT/.venv/.installed$extras"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  say "installing the project into .venv"
  "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$extras" >&2
  touch "$stamp"
fi

# ---- MCP Inspector, the TypeScript SDK, mcp-remote and oidc-provider for the end-to-end tests
npm_stamp="$ROOT/tests/e2e/node_modules/.installed"
if [ "$WANT_TEST" -eq 1 ] && { [ ! -f "$npm_stamp" ] || [ "$ROOT/tests/e2e/package-lock.json" -nt "$npm_stamp" ]; }; then
  say "installing MCP Inspector's CLI, the TypeScript SDK, mcp-remote and oidc-provider (npm) into tests/e2e"
  (cd "$ROOT/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error >&2)
  touch "$npm_stamp"
fi

# ---- the agent frameworks, in a venv of their own (they pin their own mcp)
clients_stamp="$ROOT/.venv-clients/.installed"
if [ "$WANT_TEST" -eq 1 ] && { [ ! -f "$clients_stamp" ] || [ "$ROOT/tests/e2e/frameworks/requirements.txt" -nt "$clients_stamp" ]; }; then
  say "installing the agent frameworks (tests/e2e/frameworks/requirements.txt) into .venv-clients"
  if [ ! -x "$ROOT/.venv-clients/bin/python" ]; then  # also a dangling link or a half-made folder
    rm -rf "$ROOT/.venv-clients"
    "$PYTHON" -m venv "$ROOT/.venv-clients"
  fi
  "$ROOT/.venv-clients/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/tests/e2e/frameworks/requirements.txt" >&2
  touch "$clients_stamp"
fi

if [ "$PRINT_ENV" -eq 1 ]; then
  printf 'export SANDBOX_IMAGE=%q\n' "$IMAGE"
fi
