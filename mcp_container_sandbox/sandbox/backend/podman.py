"""The Podman backend: sandboxes as Podman containers, made, inspected, listed and removed
through Podman's REST API where its service answers and its CLI otherwise (podman_engine.py),
and entered through the CLI's ``podman exec`` (podman_cli.py). It implements ``Backend``
(abstract.py): makes a container from a ContainerSpec with the product's limits, finds and
removes it, freezes it for a snapshot, and runs processes or opens connections inside it (netns.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, Process

from ..contract import HARDENING_FLAGS, LIMIT_FLAGS, ULIMIT_FLAGS
from ..errors import PodmanError, PortClosed, SandboxStopped
from ..paths import AGENT_PATH
from . import netns
from .abstract import Container, ContainerSpec, Usage
from .cgroups import Freezer, cgroup_usage
from .layers import unpack
from .own_netns import OwnNetns, Plug
from .podman_api import PodmanApi, PodmanService
from .podman_engine import PodmanEngine
from .podman_images import PodmanImages
from .podman_networks import PodmanNetworks
from .terminal import Terminal
from .podman_cli import (
    Podman,
    PodmanResult,
    _read_capped,
    is_missing_container,
    is_not_running,
    kill_process,
)

logger = logging.getLogger("mcp_sandbox.backend")

NETNS_SWEEP_SECONDS = 300  # how often namespaces no container holds are looked for (own_netns.py)
NETNS_FILE_GONE_RE = re.compile(r"joining network namespace of container (\w+): retrieving network namespace at "
                                r"(/[^:\s]+): failed to Statfs")


class PodmanBackend(PodmanNetworks, PodmanImages):
    """Sandboxes as containers of the local Podman (its networks: podman_networks.py; its images: podman_images.py)."""

    name = "podman"
    host_processes = True
    shared = False  # one server's containers: nothing to follow or record for others

    def __init__(self, podman: Podman, api: PodmanApi | None = None, own_netns: bool = True) -> None:
        self.podman = podman
        self.engine = PodmanEngine(podman, api)  # SANDBOX_PODMAN_API=off: api None, the CLI alone
        self.own_netns = OwnNetns(podman, own_netns)  # SANDBOX_NETNS=podman: False, netavark's alone
        self._ids: dict[str, str] = {}  # container name -> Podman's full id, as start and list learn them
        self._frozen: dict[str, Freezer | None] = {}  # how each frozen container was frozen (None: podman pause)
        self._paused: set[str] = set()  # containers list() saw paused
        self._netns: dict[str, netns.Netns] = {}  # network namespaces entered for preview connections
        self._enter_netns: bool | None = None  # decided at the first connection

    @classmethod
    def with_api(cls, podman: Podman, setting: str, netns: str = "server") -> PodmanBackend:
        """SANDBOX_PODMAN_API: on (a service of the server's own), off (the CLI alone), or a service's unix:// URL;
        SANDBOX_NETNS: server (sandboxes' network namespaces of the server's own, where it can) or podman."""
        if setting == "off":
            return cls(podman, own_netns=netns == "server")
        return cls(podman, PodmanApi(PodmanService(podman, "" if setting == "on" else setting)), netns == "server")

    async def open(self) -> None:
        """Start Podman's API service now rather than at the first create (the CLI serves if it cannot), and
        delete the sandbox namespaces no container holds (a server before this one ended without removing them)."""
        if self.engine.api is not None:
            await self.engine.api.service.ready()
        await self.own_netns.sweep()

    async def aclose(self) -> None:
        if self.engine.api is not None:
            await self.engine.api.aclose()
            await anyio.to_thread.run_sync(self.engine.api.service.stop)

    async def start(self, spec: ContainerSpec, layer: Path | None = None) -> str:
        if self.own_netns.serves(spec.network):
            plug = await self.own_netns.plug(spec.name, spec.network)
            spec = replace(spec, network=f"ns:{plug.path}", labels={**spec.labels, **plug.labels()})
            try:
                return await self._start(spec, layer)
            except BaseException:
                self.own_netns.unplug(spec.name)
                raise
        return await self._start(spec, layer)

    async def _start(self, spec: ContainerSpec, layer: Path | None) -> str:
        if layer is None:
            self._ids[spec.name], warnings = await self.engine.run(spec, run_args(spec))
            await self._ensure_running(spec.name)
            return warnings
        # Made, filled and then started: an overlay's upper folder is written only while unmounted.
        self._ids[spec.name], warnings = await self.engine.create(spec, run_args(spec))
        upper, _ = await self.writable_layer(spec.name)
        if not upper:
            raise PodmanError(["podman", "create"], 0, "", "Podman's storage keeps no overlay layer to fill from "
                              "the snapshot; forks need sandbox disks or Podman's overlay storage.")
        await unpack(layer, Path(upper), self.podman.env)
        await self.engine.start(spec.name, timeout=300)
        await self._ensure_running(spec.name)
        return warnings

    async def _ensure_running(self, name: str) -> None:
        """Podman said it started the container: make sure, for a sandbox must never be handed out
        stopped (seen once under heavy churn: a `podman run -d` that answered 0 left its container
        "created", never started). Its cgroup there says so in microseconds; else Podman is asked,
        and a container that is not running is started once more."""
        if Freezer.of(self._ids.get(name, "")) is not None:
            return
        for attempt in range(2):
            state = ((await self.engine.inspect(name) or {}).get("State") or {}).get("Status") or "gone"
            if state == "running":
                return
            if attempt == 0:
                logger.warning("container %s is %s just after Podman started it; starting it again", name, state)
                try:
                    await self.engine.start(name)
                except PodmanError:
                    pass
        raise PodmanError(["podman", "start"], None, f"the container is {state}, not running, though Podman said "
                          "it had started it", "Try again.")

    async def writable_layer(self, name: str) -> tuple[str, str]:
        entry = await self.engine.inspect(name)
        if entry is None:
            raise PodmanError(["podman", "inspect"], None, f"no container with name or id {name!r} found: no such container")
        driver = entry.get("GraphDriver") or {}
        upper = (driver.get("Data") or {}).get("UpperDir") or ""
        return (upper if driver.get("Name") == "overlay" else ""), str(entry.get("Image") or "")

    async def freeze(self, name: str) -> bool:
        # The container's cgroup freezer directly where it is found (~1 ms), else `podman pause`
        # (~80 ms: a second Podman process on each side of a snapshot).
        freezer = Freezer.of(self._ids.get(name, ""))
        if freezer is not None:
            try:
                await freezer.freeze()
            except OSError as exc:
                raise PodmanError(["podman", "pause"], None, str(exc), "Try again.") from None
            self._frozen[name] = freezer
            return True
        result = await self.podman.run("pause", "--", name, check=False, timeout=60)
        if result.exit_code != 0:
            if is_not_running(result.stderr):
                return False
            raise PodmanError(result.argv, result.exit_code, result.stderr, "Try again.")
        self._frozen[name] = None
        return True

    async def connect(self, name: str, port: int) -> ByteStream:
        # From the host into the container's network namespace (microseconds) where the server
        # may and the runtime's network is the kernel's; else the agent relays it (podman exec).
        if self._enter_netns is None:
            runtime = os.path.basename(self.podman.runtime or "runc")
            self._enter_netns = runtime in ("runc", "crun") and netns.usable()
            logger.info("preview connections %s", "enter sandboxes' network namespaces" if self._enter_netns
                        else "go through the sandbox agent's relay")
        if self._enter_netns:
            return await (await self._netns_of(name)).connect(port)
        return await self._relay(name, port)

    async def _netns_of(self, name: str) -> netns.Netns:
        held = self._netns.get(name)
        if held is not None and held.current():
            return held
        if held is not None:
            held.close()
            del self._netns[name]
        pid, said = await self._main_pid(name)
        if pid <= 0:
            raise SandboxStopped(f"The sandbox is not running, so nothing can be served from it ({said[-200:]}).")
        try:
            self._netns[name] = netns.Netns(pid)
        except OSError as exc:
            raise SandboxStopped(f"The sandbox's network could not be entered: {exc}.") from None
        return self._netns[name]

    async def _main_pid(self, name: str) -> tuple[int, str]:
        """The host's pid of the container's main process (0 when it is not running), and Podman's stderr."""
        try:
            entry = await self.engine.inspect(name)
        except PodmanError as exc:
            return 0, exc.stderr
        if entry is None:
            return 0, "no such container"
        return int((entry.get("State") or {}).get("Pid") or 0), ""

    async def _relay(self, name: str, port: int) -> ByteStream:
        process = await anyio.open_process(self.exec_argv(name, AGENT_PATH, "relay", str(port), interactive=True),
                                           **self.podman.spawn_options)
        said = b""
        with anyio.move_on_after(30):
            assert process.stdout is not None
            while len(said) < 3:
                try:
                    said += await process.stdout.receive(3 - len(said))
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
        if said != b"ok\n":
            why = b""
            with anyio.move_on_after(5):
                why, _ = await _read_capped(process.stderr, 4096)
            await kill_process(process)
            reason = why.decode(errors="replace").strip().removeprefix("relay: ") or "no answer"
            if "refused" in reason.lower():
                raise PortClosed(port, reason)
            raise PodmanError(self.exec_argv(name, AGENT_PATH, "relay"), None, reason, "Try again.")
        return RelayStream(process)

    async def thaw(self, name: str) -> None:
        paused = name in self._frozen or name in self._paused
        freezer = self._frozen.pop(name, None) or Freezer.of(self._ids.get(name, ""))
        self._paused.discard(name)
        if freezer is not None:
            if freezer.frozen():
                freezer.thaw()
        elif paused:
            await self.podman.run("unpause", "--", name, check=False, timeout=60)

    async def restart(self, name: str) -> None:
        await self.own_netns.restore(name)
        await self.engine.start(name)

    async def remove(self, name: str) -> PodmanResult:
        held = self._netns.pop(name, None)
        if held is not None:
            held.close()
        self._ids.pop(name, None)
        result = await self.engine.remove(name)
        if removal_failed(result) is None:
            self.own_netns.unplug(name)
        return result

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        for _ in range(8):  # each try may find one container whose namespace file was removed
            result = await self.engine.list(labels)
            if result.exit_code == 0 or not await self._restore_netns_file(result.stderr):
                break
        if result.exit_code != 0:
            raise PodmanError(result.argv, result.exit_code, result.stderr)
        containers = []
        for entry in json.loads(result.stdout or b"[]") or []:
            names = entry.get("Names") or []
            name = names[0] if names else entry.get("Id", "")
            if entry.get("Id"):
                self._ids[name] = entry["Id"]
            if entry.get("State") == "paused":
                self._paused.add(name)
            plug = Plug.of(entry.get("Labels") or {})
            if plug is not None:
                self.own_netns.plugs[name] = plug
            containers.append(Container(name, entry.get("Labels") or {}, entry.get("State") == "running",
                                        entry.get("Image", ""), entry.get("State") == "paused"))
        await self.own_netns.sweep(every=NETNS_SWEEP_SECONDS)  # the reaper lists every 30 s
        return containers

    async def _restore_netns_file(self, stderr: str) -> bool:
        """Podman lists nothing while a running container's network namespace file is gone; put
        the file back (the namespace lives on in the container) so the listing, and its removal,
        work again."""
        gone = NETNS_FILE_GONE_RE.search(stderr)
        if gone is None:
            return False
        container, path = gone.groups()
        restored = netns.restore_file(path, (await self._main_pid(container))[0])
        logger.warning("container %s's network namespace file %s was removed behind Podman's back: %s", container[:12],
                       path, "put back" if restored else "could not put it back, so Podman cannot list containers")
        return restored

    async def put_records(self, name: str, records: Mapping[str, str | None]) -> None:
        return None

    async def claim(self, name: str, labels: Mapping[str, str]) -> bool:
        return True

    async def follow(self, labels: Mapping[str, str]) -> AsyncIterator[tuple[str, Container]]:
        raise NotImplementedError("one server's Podman: there are no other servers' containers to follow")
        yield  # pragma: no cover  (makes this an async generator)

    async def status(self, name: str) -> PodmanResult:
        """The container's state as ``podman inspect --format {{.State.Status}}`` answers it."""
        argv = ["podman", "inspect", name]
        try:
            entry = await self.engine.inspect(name)
        except PodmanError as exc:
            return PodmanResult(argv, exc.exit_code or 125, b"", exc.stderr)
        if entry is None:
            return PodmanResult(argv, 125, b"", f"no container with name or id {name!r} found: no such container")
        return PodmanResult(argv, 0, str((entry.get("State") or {}).get("Status") or "").encode(), "")

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        interactive = ["-i"] if stdin is not None else []
        return await self.podman.run("exec", *interactive, name, *argv, stdin=stdin, stdout_limit=stdout_limit,
                                     check=False, timeout=timeout)

    def exec_argv(self, name: str, *argv: str, interactive: bool = False, pass_fd: bool = False) -> list[str]:
        if pass_fd:  # podman exec passes its descriptors 3 and up: a shell moves stdin there first
            return ["/bin/sh", "-c", 'exec "$0" "$@" 3<&0 </dev/null',
                    *self.podman.argv("exec", "--preserve-fds=1", name, *argv)]
        return self.podman.argv("exec", *(["-i"] if interactive else []), name, *argv)

    async def open_stream(self, name: str, *argv: str) -> ByteStream:
        process = await anyio.open_process(self.exec_argv(name, *argv, interactive=True), **self.podman.spawn_options)
        return RelayStream(process)

    def usage(self, name: str) -> Usage | None:
        return cgroup_usage(self._ids.get(name, ""))

    async def open_terminal(self, name: str, cols: int, rows: int) -> Terminal:
        argv = self.podman.argv("exec", "-it", "-e", "TERM=xterm-256color", name)
        return await Terminal.open(argv, self.podman.spawn_options, cols, rows)

    async def host_info(self) -> dict[str, Any]:
        result = await self.podman.run("info", "--format", "json", check=False, timeout=60)
        try:
            return json.loads(result.stdout or b"{}") if result.exit_code == 0 else {}
        except ValueError:
            return {}

    async def version(self) -> str:
        result = await self.podman.run("version", "--format", "{{.Client.Version}}", timeout=10)
        return result.stdout.decode(errors="replace").strip()


class RelayStream(ByteStream):
    """A connection inside a sandbox, relayed by ``sandbox-agent relay`` over podman exec's stdin and stdout."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process, self._stdin, self._stdout = process, process.stdin, process.stdout

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stdout.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stdin.send(item)

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def aclose(self) -> None:
        await kill_process(self.process)


def run_args(spec: ContainerSpec) -> list[str]:
    """The ``podman run`` arguments of a sandbox's container: always the product's limits."""
    args = ["run", "-d", "--name", spec.name, "--hostname", "sandbox", "--init",
            *LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    if spec.network:
        args += ["--network", spec.network]
    for server in spec.dns:
        args += ["--dns", server]
    for option, values in (("--env", spec.env), ("--tmpfs", spec.tmpfs), ("--volume", spec.volumes)):
        args += [arg for value in values for arg in (option, value)]
    if spec.workdir:
        args += ["--workdir", spec.workdir]
    command = list(spec.command)
    if spec.rootfs:
        return [*args, "--rootfs", spec.rootfs, *command]
    # The image's own entrypoint would not run our command.
    return [*args, "--entrypoint", command[0], "--", spec.image, *command[1:]]


def removal_failed(result: PodmanResult) -> PodmanError | None:
    """The error of a removal that failed for a reason other than the container being gone."""
    if result.exit_code != 0 and not is_missing_container(result.stderr):
        return PodmanError(result.argv, result.exit_code, result.stderr, "Try destroy_container again.")
    return None
