"""Sandboxes' network namespaces made by the server instead of Podman's netavark
(SANDBOX_NETNS=server, the default where it can): a create then skips netavark's ~25 ``iptables``
processes per container, about a third of a container's start on this kind of host.

Each sandbox on a sandbox bridge gets a namespace ``/run/netns/mcp-sandbox-<address>`` with one
end of a veth pair as its ``eth0`` (its address from the upper half of the network's subnet;
Podman hands out the lower half, ``--ip-range``), the other end on the bridge, and a default route
through the gateway, made by two ``ip -batch`` processes (~5 ms); Podman then runs the container
in it (``--network ns:<path>``). The namespace's file is its address's lease: ``ip netns add``
creates it exclusively, so two servers never hand out one address. It goes when the container is
removed, and the veth pair with it.

What netavark does once per network stays netavark's: one small container per network, the
anchor (``mcp-sandbox-anchor-<network>``, catatonit in pause mode), keeps the bridge, its NAT and
forwarding rules and its DNS server (aardvark-dns) in place while sandboxes come and go.

Not used with gVisor (runsc refuses a network namespace it did not see made) nor for a network
whose IPv4 subnet is smaller than a /20; those sandboxes' networks are netavark's as before.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import shutil
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import anyio

from ..contract import ULIMIT_FLAGS
from ..errors import PodmanError, SandboxError
from .abstract import BridgeNetwork
from .netns import delete_namespace
from .podman_cli import Podman, PodmanResult

logger = logging.getLogger("mcp_sandbox.netns")

NETNS_DIR = "/run/netns"
NETNS_PREFIX = "mcp-sandbox-"
LABEL_NETNS_NETWORK = "mcp-sandbox.netns.network"  # on a sandbox in a namespace of the server's: its network
LABEL_NETNS_ADDRESS = "mcp-sandbox.netns.address"  # ... and its address there
LABEL_ANCHOR = "mcp-sandbox.anchor"  # on a network's anchor: the network
ANCHOR_PREFIX = "mcp-sandbox-anchor-"
ANCHOR_ROOT = "/run/mcp-sandbox-anchor"  # the anchors' root folder: catatonit alone
CATATONIT = ("/usr/libexec/podman/catatonit", "/usr/libexec/catatonit/catatonit", "/usr/bin/catatonit")
ORPHAN_SECONDS = 60  # a namespace file no container names is left alone this long (its create may be under way)


class NetnsFailed(PodmanError):
    """``ip`` could not make a sandbox's network: its start failed, as Podman's would have."""

    def __init__(self, argv: list[str], exit_code: int | None, stderr: str, why: str = "") -> None:
        super().__init__(argv, exit_code, stderr, "Try again.")
        said = "; ".join(line for line in self.stderr.splitlines() if not line.startswith("Command failed"))
        self.args = (f"The sandbox's network could not be made ({why or shlex.join(argv)}: "
                     f"{said[:300] or 'no error output'}). Try again; if it persists, an operator can set "
                     "SANDBOX_NETNS=podman to have Podman's netavark make sandboxes' networks.",)


async def _ip(script: str, netns: str = "") -> PodmanResult:
    """``ip -batch``: the script's commands in one process (in the namespace ``netns``)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    with anyio.CancelScope(shield=True), anyio.fail_after(60):
        done = await anyio.run_process(argv, input=script.encode(), check=False)
    return PodmanResult(argv, done.returncode, b"", done.stderr.decode(errors="replace"))


@dataclass(frozen=True)
class Plug:
    """A sandbox's namespace on a network: where it is and the address it holds."""

    network: str
    address: str

    @property
    def name(self) -> str:
        return NETNS_PREFIX + self.address

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    @property
    def veth(self) -> str:
        """The host's end of the pair: unique with the address, within the kernel's 15 characters."""
        return "vsb%08x" % int(ipaddress.IPv4Address(self.address))

    def labels(self) -> dict[str, str]:
        return {LABEL_NETNS_NETWORK: self.network, LABEL_NETNS_ADDRESS: self.address}

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Plug | None:
        network, address = labels.get(LABEL_NETNS_NETWORK), labels.get(LABEL_NETNS_ADDRESS)
        return cls(network, address) if network and address else None


def held_addresses_args(network: str = "") -> list[str]:
    """``podman ps`` arguments that list the addresses containers hold in namespaces of the server's
    (on ``network``, or on every network), one per line."""
    label = f"label={LABEL_NETNS_NETWORK}={network}" if network else f"label={LABEL_NETNS_ADDRESS}"
    return ["ps", "-a", "--format", f'{{{{index .Labels "{LABEL_NETNS_ADDRESS}"}}}}', "--filter", label]


def usable(runtime: str) -> str:
    """Why the server cannot make sandboxes' namespaces here ("" when it can)."""
    if os.geteuid() != 0:
        return "the server is not root"
    if os.path.basename(runtime or "runc") not in ("runc", "crun"):
        return f"the runtime {os.path.basename(runtime)} makes its own network"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if catatonit() is None:
        return "catatonit, which the networks' anchors run, is not installed"
    return ""


def catatonit() -> str | None:
    return next((path for path in CATATONIT if os.access(path, os.X_OK)), None)


def _anchor_root() -> None:
    """The anchors' root folder with catatonit in it (put in place whole: other anchors may be running it)."""
    if not os.path.exists(f"{ANCHOR_ROOT}/catatonit"):
        os.makedirs(ANCHOR_ROOT, exist_ok=True)
        program = catatonit()
        assert program is not None  # usable() said so
        shutil.copy2(program, f"{ANCHOR_ROOT}/.catatonit-{os.getpid()}")
        os.replace(f"{ANCHOR_ROOT}/.catatonit-{os.getpid()}", f"{ANCHOR_ROOT}/catatonit")


def _namespace_names() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def orphans(in_use: Iterable[str], now: float | None = None, folder: str = NETNS_DIR) -> list[str]:
    """The server's namespace files (by name) that no container names and that are older than ORPHAN_SECONDS."""
    now = time.time() if now is None else now
    kept = set(in_use)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(NETNS_PREFIX) and n not in kept]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        try:
            if now - os.lstat(f"{folder}/{name}").st_mtime > ORPHAN_SECONDS:
                found.append(name)
        except FileNotFoundError:
            continue
    return found


class OwnNetns:
    """The Podman backend's sandbox namespaces, one per container it started on a known bridge."""

    def __init__(self, podman: Podman, enabled: bool) -> None:
        self.podman = podman
        self.why_not = "" if enabled else "SANDBOX_NETNS=podman"
        self._checked = not enabled
        self.bridges: dict[str, tuple[BridgeNetwork, ipaddress.IPv4Network]] = {}  # networks it serves, by name
        self.plugs: dict[str, Plug] = {}  # by container name
        self._next: dict[str, int] = {}  # by network: the next address to try, as an offset in the subnet
        self._anchored: set[str] = set()
        self._lock = anyio.Lock()
        self._swept = -float("inf")

    def learn(self, bridge: BridgeNetwork) -> bool:
        """A sandbox bridge: whether its sandboxes get namespaces of the server's (its subnet an IPv4 /20 or wider)."""
        subnets = [ipaddress.ip_network(s, strict=False) for s in bridge.subnets if s]
        gateways = [g for g in bridge.gateways if ipaddress.ip_address(g).version == 4]
        if len(subnets) == 1 and isinstance(subnets[0], ipaddress.IPv4Network) and subnets[0].prefixlen <= 20 \
                and gateways:
            self.bridges[bridge.name] = (bridge, subnets[0])
        return self.serves(bridge.name)

    def serves(self, network: str) -> bool:
        if not self._checked:
            self._checked, self.why_not = True, usable(self.podman.runtime)
            logger.info("sandboxes' network namespaces are %s", f"netavark's: {self.why_not}" if self.why_not
                        else "the server's own (netavark sets up only each network's anchor)")
        return not self.why_not and network in self.bridges

    async def plug(self, name: str, network: str, address: str = "") -> Plug:
        """A new namespace on the network for the container ``name`` (at ``address``, else the next free one)."""
        await self._anchor(network)
        bridge, subnet = self.bridges[network]
        taken = set() if address else _namespace_names()  # other servers' sandboxes too
        for _ in range(1 if address else 64):
            plug = Plug(network, address or self._next_address(network, subnet, taken))
            made = await _ip(f"netns add {plug.name}\nlink add {plug.veth} type veth peer name eth0 netns {plug.name}\n"
                             f"link set {plug.veth} master {bridge.interface} up\n")
            if made.exit_code == 0:
                break
            if "Cannot create namespace file" not in made.stderr:  # the namespace was made: it goes again
                self._unplug_quietly(plug, made.stderr)
            if "File exists" not in made.stderr:  # not an address held already: the bridge is gone, say
                self._anchored.discard(network)  # the next create looks at the anchor again, which remakes it
                raise NetnsFailed(made.argv, made.exit_code, made.stderr)
        else:
            raise NetnsFailed(made.argv, made.exit_code, made.stderr, f"no free address on {network} after 64 tries")
        gateway = next(g for g in bridge.gateways if ipaddress.ip_address(g).version == 4)
        inside = await _ip(f"link set lo up\naddr add {plug.address}/{subnet.prefixlen} dev eth0\nlink set eth0 up\n"
                           f"route add default via {gateway}\n", netns=plug.name)
        if inside.exit_code != 0:
            self._unplug_quietly(plug, inside.stderr)
            raise NetnsFailed(inside.argv, inside.exit_code, inside.stderr)
        self.plugs[name] = plug
        return plug

    def _next_address(self, network: str, subnet: ipaddress.IPv4Network, taken: Collection[str] = ()) -> str:
        """The next address of the subnet's upper half (its last, the broadcast address, left out), round and
        round, whose namespace is not among ``taken`` (unless every one is)."""
        half = subnet.num_addresses // 2
        for _ in range(half):  # x.x.x.0 and x.x.x.255 are left out too: some programs take them for a network's ends
            offset = self._next.get(network, half)
            self._next[network] = half + (offset + 1 - half) % (half - 1)
            address = str(subnet.network_address + offset)
            if (offset & 0xFF) not in (0, 0xFF) and NETNS_PREFIX + address not in taken:
                return address
        return address

    def _unplug_quietly(self, plug: Plug, why: str) -> None:
        logger.info("namespace %s not made: %s", plug.name, why.strip())
        try:
            delete_namespace(plug.name)
        except OSError as exc:
            logger.warning("could not delete the half-made namespace %s: %s", plug.name, exc)

    def unplug(self, name: str) -> None:
        """The container ``name`` is gone: so goes its namespace, and the veth pair with it."""
        plug = self.plugs.pop(name, None)
        if plug is not None:
            try:
                delete_namespace(plug.name)
            except OSError as exc:
                logger.warning("could not delete the network namespace %s of %s: %s", plug.name, name, exc)

    async def restore(self, name: str) -> None:
        """Before a stopped container starts again: its namespace, made anew where the host restarted (/run is new)."""
        plug = self.plugs.get(name)
        if plug is not None and not os.path.exists(plug.path) and self.serves(plug.network):
            await self.plug(name, plug.network, plug.address)

    async def sweep(self, every: float = 0) -> None:
        """Delete the namespaces no container holds (a server before this one ended without removing them,
        or a container was removed behind the server's back); with ``every``, at most once that often."""
        if time.monotonic() - self._swept < every:
            return
        self._swept = time.monotonic()
        if not any(name.startswith(NETNS_PREFIX) for name in _namespace_names()):
            return
        try:
            held = await self.podman.run(*held_addresses_args(), check=False, timeout=60)
        except SandboxError:  # no Podman: /health says so
            return
        if held.exit_code != 0:
            return
        for name in orphans(NETNS_PREFIX + address for address in held.stdout.decode(errors="replace").split()):
            logger.info("deleting the network namespace %s, which no container holds", name)
            try:
                delete_namespace(name)
            except OSError as exc:
                logger.warning("could not delete the network namespace %s: %s", name, exc)

    async def _anchor(self, network: str) -> None:
        """The network's anchor, running (started, or made, at the first sandbox a server puts there)."""
        if network in self._anchored:
            return
        async with self._lock:
            if network in self._anchored:
                return
            name = ANCHOR_PREFIX + network
            state = await self.podman.run("inspect", "--type", "container", "--format", "{{.State.Status}}", "--", name,
                                          check=False, timeout=60)
            status = state.stdout.decode(errors="replace").strip() if state.exit_code == 0 else ""
            if status != "running":
                if status:
                    made = await self.podman.run("start", name, check=False, timeout=60)
                else:
                    _anchor_root()
                    # --rootfs comes last: Podman 4.3 drops the --ulimit flags before it.
                    made = await self.podman.run(
                        "run", "-d", "--name", name, "--label", f"{LABEL_ANCHOR}={network}", "--network", network,
                        "--memory=16m", "--pids-limit=4", "--cap-drop=ALL", "--security-opt=no-new-privileges",
                        *ULIMIT_FLAGS, "--log-driver=none", "--rootfs", ANCHOR_ROOT, "/catatonit", "-P",
                        check=False, timeout=120)
                if made.exit_code != 0 and "already in use" not in made.stderr:
                    raise PodmanError(made.argv, made.exit_code, made.stderr,
                                      "The sandbox network's anchor did not start; try again.")
            self._anchored.add(network)
