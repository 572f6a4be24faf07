"""The product contract's exact limits (SPEC section 5): the flags every sandbox is started with,
and the same limits as a tool's result and in words. scripts/setup.sh reads LIMIT_FLAGS and
ULIMIT_FLAGS from this file without the package's dependencies: it imports nothing of its own."""

from __future__ import annotations

from typing import Any

# The exact limits of the product contract (SPEC section 5).
MEMORY_MB = 256
CPUS = 0.5
PIDS = 100
LIMIT_FLAGS: tuple[str, ...] = (
    f"--memory={MEMORY_MB}m",
    f"--cpus={CPUS}",
    f"--pids-limit={PIDS}",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
LIMITS: dict[str, Any] = {
    "memory": f"{MEMORY_MB}m",
    "cpus": CPUS,
    "pids": PIDS,
    "capabilities": "none (--cap-drop=ALL)",
    "no_new_privileges": True,
}
# The same, in words, for tool descriptions and messages.
LIMITS_IN_WORDS = f"{MEMORY_MB} MB memory, {'half a' if CPUS == 0.5 else CPUS} CPU, {PIDS} processes, no capabilities"
# Bounded ulimits. Podman's defaults (about a million) cannot be set by a process
# without CAP_SYS_RESOURCE; nproc counts per user across the host, so it stays high and
# --pids-limit does the real limiting.
ULIMIT_FLAGS: tuple[str, ...] = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=32768:32768")
# Beyond the exact flags: swap may not double the memory limit, and the main process (which
# prints nothing) keeps no log that could grow on the host.
HARDENING_FLAGS: tuple[str, ...] = (f"--memory-swap={MEMORY_MB}m", "--log-driver=none")

MEMORY_LIMIT_BYTES = MEMORY_MB * 1024 * 1024
