"""The podman CLI: one helper that runs it with argv lists (never a shell), in a working
folder and with a PATH of the server's own, and what Podman says about the host."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from ..errors import PodmanError, PodmanUnavailable, SandboxError

logger = logging.getLogger("mcp_sandbox.podman")



@dataclass(frozen=True)
class PodmanResult:
    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: str


async def _read_capped(stream: anyio.abc.ByteReceiveStream | None, limit: int) -> tuple[bytes, int]:
    """Read a stream to its end, keeping at most ``limit`` bytes; returns them and the total seen."""
    if stream is None:
        return b"", 0
    kept = bytearray()
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept), total


_MISSING_CONTAINER = ("no such container", "no container with name or id", "does not exist in database")
_NOT_RUNNING = ("is not running", "container state improper", "can only create exec sessions on running containers")


# Where system tools live. Desktop clients start stdio servers with a short PATH
# (/usr/local/bin:/usr/bin:/bin): Podman's netavark then cannot run iptables from /usr/sbin, nor
# the server find mkfs.ext4. Every subprocess of the server gets these folders after the caller's.
SYSTEM_PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def system_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the server's subprocesses: the caller's, with the system folders on PATH."""
    env = dict(os.environ if environ is None else environ)
    have = [folder for folder in env.get("PATH", "").split(":") if folder]
    env["PATH"] = ":".join(have + [folder for folder in SYSTEM_PATH_DIRS if folder not in have])
    return env


class Podman:
    """Runs the ``podman`` CLI with argv lists, never through a shell.

    Its processes run in a working directory of the server's own (``workdir``): conmon, which
    Podman starts beside each ``podman exec``, writes a file named ``oom`` into its working
    directory whenever the sandbox's memory limit kills something, and that must not land in
    whatever folder the server was started from.
    """

    def __init__(self, program: str = "podman", runtime: str = "", workdir: str | None = None,
                 timeout_cap: float | None = None) -> None:
        self.program = program
        self.runtime = runtime
        self.timeout_cap = timeout_cap  # SANDBOX_PODMAN_TIMEOUT_SECONDS: no one command waits longer
        self.env = system_env()
        self.workdir = workdir

    @property
    def spawn_options(self) -> dict[str, Any]:
        """Keyword arguments for anyio.open_process, for every podman process the server starts."""
        if self.workdir is None or not os.path.isdir(self.workdir):
            self.workdir = tempfile.mkdtemp(prefix="mcp-sandbox-podman-")
        return {"env": self.env, "cwd": self.workdir}

    def close(self) -> None:
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def argv(self, *args: str) -> list[str]:
        base = [self.program]
        if self.runtime:
            base += ["--runtime", self.runtime]
        return [*base, *args]

    async def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        stdout_limit: int = 16 * 1024 * 1024,
        timeout: float = 120,
        check: bool = True,
        whole: bool = False,
    ) -> PodmanResult:
        """``podman ARGS``; with ``whole``, it runs to its end even when the caller is cancelled
        (a stopping server): a ``podman run`` killed half way leaves a container's ``runc init``
        and conmon behind, which Podman no longer lists, holding the sandbox's mounts."""
        with anyio.CancelScope(shield=whole):
            return await self._run(*args, stdin=stdin, stdout_limit=stdout_limit, timeout=timeout, check=check)

    async def _run(self, *args: str, stdin: bytes | None, stdout_limit: int, timeout: float,
                   check: bool) -> PodmanResult:
        argv = self.argv(*args)
        logger.debug("run %s", shlex.join(argv))
        timeout = min(timeout, self.timeout_cap or timeout)
        try:
            with anyio.fail_after(timeout):
                async with await anyio.open_process(
                    argv,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    **self.spawn_options,
                ) as process:
                    if stdin is not None and process.stdin is not None:
                        try:
                            await process.stdin.send(stdin)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            pass
                        await process.stdin.aclose()
                    results: dict[str, tuple[bytes, int]] = {}

                    async def collect(key: str, stream: anyio.abc.ByteReceiveStream | None, limit: int) -> None:
                        results[key] = await _read_capped(stream, limit)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(collect, "out", process.stdout, stdout_limit)
                        tg.start_soon(collect, "err", process.stderr, 64 * 1024)
                    exit_code = await process.wait()
        except FileNotFoundError:
            raise PodmanUnavailable(
                argv, None, f"the program {self.program!r} was not found",
                "Install Podman (scripts/setup.sh does) or set PODMAN to its path.",
            ) from None
        except TimeoutError:
            raise PodmanError(argv, None, f"no answer within {timeout:g} s (SANDBOX_PODMAN_TIMEOUT_SECONDS caps it)",
                              "Podman may be overloaded; try again.") from None
        stderr = results["err"][0].decode("utf-8", errors="replace")
        result = PodmanResult(argv, exit_code, results["out"][0], stderr)
        if check and exit_code != 0:
            raise PodmanError(argv, exit_code, stderr)
        return result


def check_event_loop() -> None:
    """Refuse uvloop: libuv starts children without closing the descriptors they inherit, so the
    conmon that ``podman run -d`` leaves behind keeps the server's end of the output pipe open and
    the run never ends (seen: every create waited out its 300 s timeout). uvicorn picks uvloop by
    itself whenever it is installed, unless told ``loop="asyncio"`` (server.main does)."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.split(".")[0] == "uvloop":
        raise SandboxError(
            "The server runs on uvloop, under which a `podman run` never ends here (its conmon keeps the "
            "server's pipe open). Start it with `python server.py`, which uses asyncio's loop, or give "
            "uvicorn --loop asyncio (FastMCP's run: uvicorn_config={'loop': 'asyncio'})."
        )


def is_missing_container(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _MISSING_CONTAINER)


def is_not_running(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _NOT_RUNNING)


async def kill_process(process: anyio.abc.Process | None) -> None:
    """Kill a host-side ``podman`` client and reap it, even when the caller is being cancelled.
    (What it started inside a sandbox goes on: that is the sandbox's to stop.)"""
    if process is None:
        return
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.aclose()
