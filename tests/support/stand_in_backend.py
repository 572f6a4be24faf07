"""A STAND-IN for the Podman backend, for unit tests of the tool layer: it implements the
``Backend`` protocol (mcp_container_sandbox/sandbox/backend/abstract.py) in memory, so the real
facade, runtimes, records parser and tools run above it in milliseconds, without Podman.

Nothing runs anywhere. A "container" is a record with a small file tree; the in-sandbox shell
library's functions (sandbox-lib.sh) are answered here in the library's own wire formats (the
framed command report, "ok SIZE N", listings, verdicts), which the real parsers read. A command is
not run by a shell: ``programs`` says what it does (the default knows ``echo``, ``exit N``,
``sleep N`` and ``cat``); tests add their own. Behaviour that needs a real sandbox (limits,
egress, processes, snapshots of a real layer) stays with the integration tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream

from mcp_container_sandbox.sandbox.backend.abstract import (
    BridgeNetwork,
    Container,
    ContainerSpec,
    ImageRoot,
)
from mcp_container_sandbox.sandbox.backend.podman_cli import PodmanResult
from mcp_container_sandbox.sandbox.contract import MEMORY_LIMIT_BYTES
from mcp_container_sandbox.sandbox.errors import DiskUnavailable, PortClosed, SandboxError
from mcp_container_sandbox.sandbox.runtime.helpers import BOOTSTRAP, INSTALL_HELPERS

MISSING = 'Error: no container with name or ID "{name}" found: no such container'
REGULAR, DIRECTORY = 0o100644, 0o040755


@dataclass
class Outcome:
    """What a command does: its output and exit code, or ``running`` until ``seconds`` pass."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    seconds: float = 0.0  # > 0: it runs this long (a sleep), then exits with exit_code


Program = Callable[[str], Outcome | None]  # a command line -> what it does (None: not this program)


def default_programs(command: str) -> Outcome | None:
    words = command.split()
    if command.startswith("echo "):
        return Outcome(stdout=command[5:].strip("'\"").encode() + b"\n")
    if len(words) == 2 and words[0] == "exit" and words[1].isdigit():
        return Outcome(exit_code=int(words[1]))
    if len(words) == 2 and words[0] == "sleep":
        return Outcome(seconds=float(words[1]))
    if command.strip() == "cat":
        return Outcome(seconds=float("inf"))  # reads its stdin until it is closed
    return None


@dataclass
class Command:
    command_id: str
    command: str
    flags: int
    timeout: float
    outcome: Outcome
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    finished_ms: int | None = None
    timed_out: bool = False
    stdin_closed: bool = False

    def settle(self) -> None:
        """Let the clock decide: a sleep ends when its time is up, or at its timeout."""
        if self.exit_code is not None:
            return
        elapsed = time.time() - self.started_ms / 1000
        if elapsed >= self.timeout and self.outcome.seconds > self.timeout:
            self.end(143, timed_out=True)
        elif elapsed >= self.outcome.seconds:
            self.end(self.outcome.exit_code)

    def end(self, exit_code: int, timed_out: bool = False) -> None:
        self.exit_code, self.timed_out, self.finished_ms = exit_code, timed_out, int(time.time() * 1000)


@dataclass
class StandInContainer:
    name: str
    labels: dict[str, str]
    image: str
    files: dict[str, bytes] = field(default_factory=lambda: {"/etc/os-release": b"NAME=stand-in\n"})
    dirs: set[str] = field(default_factory=lambda: {"/", "/etc", "/tmp", "/root"})
    commands: dict[str, Command] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    running: bool = True


class StandInBackend:
    """The stand-in: every ``Backend`` method, in memory (see the module's docstring)."""

    name = "stand-in"
    host_processes = True
    shared = False  # one server's containers: nothing to follow or record for others

    def __init__(self, programs: Sequence[Program] = ()) -> None:
        self.containers: dict[str, StandInContainer] = {}
        self.programs: list[Program] = [*programs, default_programs]
        self.execs: list[tuple[str, ...]] = []  # every exec's argv, for tests that count them

    # ----- where a sandbox lives

    async def start(self, spec: ContainerSpec, layer: Path | None = None) -> str:
        self.containers[spec.name] = StandInContainer(spec.name, dict(spec.labels), spec.image or spec.rootfs)
        return ""

    async def writable_layer(self, name: str) -> tuple[str, str]:
        return "", ""  # nothing on a host: snapshots are refused, as on a storage that keeps no layer

    async def freeze(self, name: str) -> bool:
        return name in self.containers

    async def thaw(self, name: str) -> None:
        return None

    async def connect(self, name: str, port: int) -> ByteStream:
        raise PortClosed(f"nothing listens on port {port} in the stand-in")

    async def restart(self, name: str) -> None:
        if name in self.containers:
            self.containers[name].running = True

    async def remove(self, name: str) -> PodmanResult:
        self.containers.pop(name, None)
        return PodmanResult(["rm", name], 0, b"", "")

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        return [Container(c.name, dict(c.labels), c.running, c.image) for c in self.containers.values()
                if all(c.labels.get(key) == value for key, value in labels.items())]

    async def put_records(self, name: str, records: Mapping[str, str | None]) -> None:
        return None

    async def claim(self, name: str, labels: Mapping[str, str]) -> bool:
        return True

    async def follow(self, labels: Mapping[str, str]) -> AsyncIterator[tuple[str, Container]]:
        raise NotImplementedError("the stand-in is not shared")
        yield  # pragma: no cover

    async def status(self, name: str) -> PodmanResult:
        if name not in self.containers:
            return PodmanResult(["inspect", name], 125, b"", MISSING.format(name=name))
        return PodmanResult(["inspect", name], 0, b"running\n" if self.containers[name].running else b"exited\n", "")

    def exec_argv(self, name: str, *argv: str, interactive: bool = False, pass_fd: bool = False) -> list[str]:
        return ["false"]  # no long-lived process into a stand-in: the server falls back to one exec a call

    async def open_stream(self, name: str, *argv: str) -> ByteStream:
        raise SandboxError("no long-lived process runs in the stand-in")

    async def image_id(self, image: str) -> str:
        return "sha256:" + "0" * 64

    async def host_info(self) -> dict[str, Any]:
        return {"host": {"security": {"rootless": False}, "cgroupVersion": "v2",
                         "cgroupControllers": ["cpu", "memory", "pids"]}}

    async def bridge_network(self, name: str, labels: Mapping[str, str]) -> BridgeNetwork:
        return BridgeNetwork(name, "standin0", ("10.254.0.0/24",), ("10.254.0.1",))

    async def network_users(self, name: str) -> list[str]:
        return []

    async def network_names(self) -> list[str]:
        return []

    async def address(self, name: str, network: str) -> str:
        return ""

    async def network_addresses(self, network: str) -> set[str] | None:
        return set()

    async def image_root(self, image: str) -> ImageRoot:
        raise DiskUnavailable("the stand-in keeps no image layers")

    async def keep_image(self, image: str, image_id: str) -> None:
        return None

    async def version(self) -> str:
        return "stand-in"

    # ----- what runs inside

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        self.execs.append(argv)
        container = self.containers.get(name)
        if container is None:
            return PodmanResult(list(argv), 125, b"", MISSING.format(name=name))
        if argv[:1] == ("cat",):  # the limits check reads the sandbox's memory cgroup
            return PodmanResult(list(argv), 0, f"{MEMORY_LIMIT_BYTES}\n".encode(), "")
        if argv[:3] == ("/bin/sh", "-c", INSTALL_HELPERS):
            return PodmanResult(list(argv), 0, b"", "")
        if argv[:3] == ("/bin/sh", "-c", BOOTSTRAP):
            library = _Library(container, self.programs)
            if argv[4] == "run":  # as the library's run: it answers once the command has ended
                command = library.start(*argv[5:], stdin=stdin or b"")
                while command.exit_code is None:
                    await anyio.sleep(0.01)
                    command.settle()
                out = library.read_command(command.command_id, argv[7], "0", "0", stdin=b"")
            else:
                out = library.call(argv[4], list(argv[5:]), stdin or b"")
            return PodmanResult(list(argv), 0, out[:stdout_limit], "")
        if len(argv) == 6 and argv[2].startswith('mkdir -p "$(dirname "$1")"'):  # ExecRuntime.put
            path = argv[4]
            if path in container.dirs:
                return PodmanResult(list(argv), 1, b"", "")
            _make_parents(container, path)
            container.files[path] = stdin or b""
            return PodmanResult(list(argv), 0, b"", "")
        return PodmanResult(list(argv), 127, b"", f"stand-in: {argv[0]!r} is not emulated")


def _make_parents(container: StandInContainer, path: str) -> None:
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        container.dirs.add("/" + "/".join(parts[: i + 1]))


class _Library:
    """The shell library's functions, answered in its wire formats."""

    def __init__(self, container: StandInContainer, programs: list[Program]) -> None:
        self.container, self.programs = container, programs

    def call(self, function: str, args: list[str], stdin: bytes) -> bytes:
        return getattr(self, function)(*args, stdin=stdin)

    def start(self, command_id: str, timeout: str, cap: str, _start: str, flags: str, stdin: bytes) -> Command:
        text = stdin.decode()
        outcome = next((o for program in self.programs if (o := program(text)) is not None),
                       Outcome(stderr=f"sh: {text.split()[0] if text.split() else text}: not found\n".encode(),
                               exit_code=127))
        command = Command(command_id, text, int(flags), float(timeout), outcome)
        command.stdout += outcome.stdout
        command.stderr += outcome.stderr
        self.container.commands[command_id] = command
        command.settle()
        return command

    def read_command(self, command_id: str, cap: str, out_offset: str, err_offset: str, stdin: bytes) -> bytes:
        command = self.container.commands.get(command_id)
        if command is None:
            return b"MCPSB-NONE\n"
        command.settle()
        return self._report(command, int(cap), int(out_offset), int(err_offset))

    @staticmethod
    def _report(command: Command, cap: int, out_offset: int, err_offset: int) -> bytes:
        out, err = bytes(command.stdout), bytes(command.stderr)
        shown_out, shown_err = out[out_offset:out_offset + cap], err[err_offset:err_offset + cap]
        alive = command.exit_code is None
        fields = [
            "MCPSB2", "" if alive else str(command.exit_code), "1" if command.timed_out else "0", "1" if alive else "0",
            str(command.started_ms), "" if command.finished_ms is None else str(command.finished_ms),
            str(len(out)), str(len(err)), str(len(shown_out)), str(len(shown_err)), f"{out_offset} {err_offset} 0 0 0 0",
        ]
        return ("\n".join(fields) + "\n").encode() + shown_out + shown_err

    def list_commands(self, stdin: bytes) -> bytes:
        lines = []
        for command in self.container.commands.values():
            command.settle()
            exit_text = "" if command.exit_code is None else str(command.exit_code)
            alive = "1" if command.exit_code is None else "0"
            preview = re.sub(r"[\n\t\r]", " ", command.command[:200])
            lines.append(f"{command.command_id}\t{exit_text}\t{int(command.timed_out)}\t{alive}\t{command.started_ms}\t{preview}\n")
        return "".join(lines).encode()

    def signal_command(self, command_id: str, signum: str, stdin: bytes) -> bytes:
        command = self.container.commands.get(command_id)
        if command is None:
            return b"error no-such-command\n"
        command.settle()
        if command.exit_code is not None:
            return b"error finished\n"
        if int(signum) not in (18, 19):  # CONT and STOP leave it running
            command.end(128 + int(signum))
        return b"ok\n"

    def write_stdin(self, command_id: str, close: str, length: str, stdin: bytes) -> bytes:
        command = self.container.commands.get(command_id)
        if command is None:
            return b"error no-such-command\n"
        if not command.flags & 3:
            return b"error not-kept-open\n"
        if command.stdin_closed:
            return b"error closed\n"
        command.settle()
        if command.exit_code is not None:
            return b"error finished\n"
        before = (len(command.stdout), len(command.stderr))
        command.stdout += stdin  # the stand-in's programs that read stdin echo it, as cat does
        if close == "1":
            command.stdin_closed = True
            command.end(0)
        return f"ok {length} {int(bool(command.flags & 2))} {before[0]} {before[1]}\n".encode()

    def read_file(self, path: str, offset: str, length: str, stdin: bytes) -> bytes:
        if path in self.container.dirs:
            return b"error directory\n"
        data = self.container.files.get(path)
        if data is None:
            return b"error missing\n"
        piece = data[int(offset):int(offset) + int(length)]
        return f"ok {len(data)} {len(piece)}\n".encode() + piece

    def list_files(self, path: str, depth: str, max_entries: str, stdin: bytes) -> bytes:
        base = path.rstrip("/") or "/"
        if base in self.container.files:
            return b"error not-directory\n"
        if base not in self.container.dirs:
            return b"error missing\n"
        prefix = base.rstrip("/") + "/"
        found = [(p, DIRECTORY, 4096) for p in self.container.dirs if p.startswith(prefix)]
        found += [(p, REGULAR, len(data)) for p, data in self.container.files.items() if p.startswith(prefix)]
        found = [entry for entry in found if entry[0][len(prefix):].count("/") < int(depth)]
        lines = [f"{mode:x} {size} {int(time.time())} ./{p[len(prefix):]}" for p, mode, size in sorted(found)]
        return ("ok\n" + "".join(line + "\n" for line in lines[: int(max_entries) + 1])).encode()

    def link_file(self, path: str, cap: str, file_id: str, stdin: bytes) -> bytes:
        if path in self.container.dirs:
            return b"directory\n"
        data = self.container.files.get(path)
        if data is None:
            return b"missing\n"
        if len(data) > int(cap):
            return f"too-big {len(data)}\n".encode()
        self.container.links[file_id] = path
        return f"file {len(data)}\n".encode()

    def list_links(self, stdin: bytes) -> bytes:
        return b"".join(f"{file_id}\0{path}\0".encode() for file_id, path in self.container.links.items())
