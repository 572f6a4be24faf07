"""The egress proxy: per-sandbox allow-lists of host names (create_container(allow_domains=...)).

A sandbox with an allow-list reaches nothing directly (egress.py drops its packets in the host's
kernel, DNS included) but this HTTP(S) forward proxy, listening on its bridge's gateway. The
proxy knows a sandbox by its address on the bridge, which it cannot change (no capabilities).
Plain HTTP is checked by the request's host, HTTPS by the CONNECT host: TLS is never opened. A
name not on the list is refused (403, with a body that says why) before anything is resolved
or connected; a listed name that resolves to an address the public policy blocks is refused too
(DNS rebinding), unless SANDBOX_EGRESS_ALLOW_CIDRS opens it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence

from ..errors import InvalidAllowList
from .certificates import ProxyCA, upstream_context
from .interception import intercept
from .secret_rules import SecretRule

logger = logging.getLogger("mcp_sandbox.proxy")

MAX_HEAD_BYTES = 32 * 1024
HEAD_TIMEOUT_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 15
CHUNK_BYTES = 256 * 1024
IP_FREEBIND = 15  # linux/in.h: bind to an address the host does not have yet (the bridge comes with its first sandbox)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def check_allow_domains(domains: object, limit: int) -> tuple[str, ...]:
    """The allow-list as given to create_container, checked and lowercased; InvalidAllowList says what is wrong."""
    if not isinstance(domains, (list, tuple)):
        raise InvalidAllowList("allow_domains must be a list of host names, e.g. [\"api.github.com\", \"*.pypi.org\"].")
    if not domains:
        raise InvalidAllowList("allow_domains is empty: list the hosts the sandbox may reach, or use network=false "
                               "for none at all.")
    if len(domains) > limit:
        raise InvalidAllowList(f"allow_domains has {len(domains)} entries; at most {limit} are allowed "
                               "(SANDBOX_MAX_ALLOW_DOMAINS). Use '*.example.org' for all of a domain's subdomains.")
    checked = []
    for raw in domains:
        domain = raw.strip().lower().rstrip(".") if isinstance(raw, str) else ""
        try:
            ipaddress.ip_address(domain.strip("[]"))
            is_address = True
        except ValueError:
            is_address = False
        if is_address or len(domain) > 253 or not DOMAIN_RE.match(domain):
            raise InvalidAllowList(
                f"allow_domains: {str(raw)[:100]!r} is not a host name pattern. Write exact names "
                "(api.github.com) or '*.' and a domain for its subdomains (*.example.org); no schemes, ports, "
                "paths or IP addresses."
            )
        checked.append(domain)
    return tuple(dict.fromkeys(checked))


def domain_allowed(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def address_blocked(address: str, blocked: Sequence[str], allowed: Sequence[str]) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(cidr) for cidr in allowed if ipaddress.ip_network(cidr).version == ip.version):
        return False
    return any(ip in ipaddress.ip_network(cidr) for cidr in blocked if ipaddress.ip_network(cidr).version == ip.version)


def _response(status: str, text: str) -> bytes:
    body = (f"mcp-sandbox egress proxy: {text}\n").encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class EgressProxy:
    """A listener on each sandbox network's gateway (one port); the allow-lists of the sandboxes on them."""

    def __init__(self, blocked: Sequence[str], allowed_cidrs: Sequence[str], host_addresses: Callable[[], set[str]]) -> None:
        self.blocked, self.allowed_cidrs = tuple(blocked), tuple(allowed_cidrs)
        self._host_addresses = host_addresses  # the host's own: never a destination either
        self._lists: dict[str, tuple[str, tuple[str, ...]]] = {}  # sandbox address -> (container_id, patterns)
        self._secrets: dict[str, tuple[SecretRule, ...]] = {}  # sandbox address -> its secrets (secrets.py)
        self.secret_value: Callable[[str], str | None] = lambda name: None  # set by the egress policy
        self.ca: ProxyCA | None = None  # made when the first sandbox with secrets needs it
        self._upstream_tls: ssl.SSLContext | None = None
        # The connections open through the proxy, by sandbox address: (host, the sandbox's end).
        self._open_now: dict[str, set[tuple[str, asyncio.StreamWriter]]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._more: list[asyncio.base_events.Server] = []  # on the gateways of later sandbox networks
        self.address, self.port = "", 0

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def start(self, address: str, port: int) -> None:
        self._server = await self._listen(address, port)
        self.address, self.port = address, self._server.sockets[0].getsockname()[1]

    async def listen(self, address: str) -> None:
        """Listen on another address too (a later sandbox network's gateway), on the same port."""
        self._more.append(await self._listen(address, self.port))

    async def _listen(self, address: str, port: int) -> asyncio.base_events.Server:
        # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each accepted connection (it checks the
        # socket's proto, which a socket made with 0 keeps): an answer written in parts (a head, then a
        # body) would otherwise wait for the client's delayed ACK, 40 ms each.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
        return await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD_BYTES)

    async def stop(self) -> None:
        servers, self._server, self._more = [self._server, *self._more], None, []
        for server in servers:
            if server is not None:
                server.close()

    def allow(self, address: str, container_id: str, patterns: Sequence[str], rules: Sequence[SecretRule] = ()) -> None:
        """The sandbox's allow-list (and secrets) from now on: its open connections to hosts no longer
        on it are cut."""
        self._lists[address] = (container_id, tuple(patterns))
        self._secrets[address] = tuple(rules)
        self._cut(address, lambda host: not domain_allowed(host, patterns))

    def forget(self, address: str) -> None:
        """The sandbox is no longer behind the proxy: its open connections through it are cut."""
        self._lists.pop(address, None)
        self._secrets.pop(address, None)
        self._cut(address, lambda host: True)

    def _cut(self, address: str, which: Callable[[str], bool]) -> None:
        for host, writer in list(self._open_now.get(address, ())):
            if which(host):
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            peer = writer.get_extra_info("peername")[0]
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                writer.write(_response("400 Bad Request", "the request's head did not arrive whole"))
                return
            opened = await self._open(peer, head, reader, writer)
            if opened is None:
                return
            up_reader, upstream, silent, host = opened
            held = (host, writer)
            self._open_now.setdefault(peer, set()).add(held)
            try:
                await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer, silent))
            finally:
                self._open_now.get(peer, set()).discard(held)
                if not self._open_now.get(peer, True):
                    del self._open_now[peer]
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping: the connection just closes (asyncio would log the cancellation)
        finally:
            for stream in (upstream, writer):
                if stream is not None:
                    stream.close()

    async def _open(self, peer: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, str] | None:
        """Check the request and connect upstream; None when it was answered here (a CONNECT to a
        host with the sandbox's secrets is served here whole: interception.py). With the streams
        comes what to answer if the upstream ends without a byte (plain HTTP only: a CONNECT tunnel
        carries whatever the two ends say), and the host."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        entry = self._lists.get(peer)
        if entry is None:
            writer.write(_response("403 Forbidden", f"{peer} is not a sandbox with allow_domains"))
            return None
        container_id, patterns = entry
        if len(parts) != 3:
            writer.write(_response("400 Bad Request", "not an HTTP request"))
            return None
        method, target, version = parts
        destination = _destination(method, target, version, lines)
        if destination is None:
            writer.write(_response("400 Bad Request", "use this proxy as an HTTP proxy (absolute http:// URLs, "
                                   "or CONNECT for https)"))
            return None
        host, port_text, rest = destination
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            writer.write(_response("400 Bad Request", f"{target[:200]!r} has no valid port"))
            return None
        if not domain_allowed(host, patterns):
            writer.write(_response(
                "403 Forbidden", f"{host[:253]} is not in the allow_domains of sandbox {container_id} "
                f"({', '.join(patterns)}). set_egress can give it allow_domains that include it."))
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
        except OSError as exc:
            writer.write(_response("502 Bad Gateway", f"{host} does not resolve ({exc})"))
            return None
        own = self._host_addresses()
        addresses = [info[4][0] for info in infos]
        refused = [a for a in addresses if a in own or address_blocked(a, self.blocked, self.allowed_cidrs)]
        if refused:
            writer.write(_response("403 Forbidden", f"{host} resolves to {refused[0]}, an address sandboxes may not "
                                   "reach (the host, or a private, loopback or link-local range)"))
            return None
        rules = [rule for rule in self._secrets.get(peer, ()) if rule.host == host]
        if method == "CONNECT" and rules:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self._intercept(reader, writer, host, addresses[0], int(port_text), rules)
            return None
        try:
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(addresses[0], int(port_text), limit=CHUNK_BYTES), CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:
            writer.write(_response("502 Bad Gateway", f"could not connect to {host}:{port_text} ({exc or 'timeout'})"))
            return None
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return up_reader, upstream, b"", host
        upstream.write(rest)
        return up_reader, upstream, _response(
            "502 Bad Gateway", f"{host}:{port_text} closed the connection without answering; try again"), host


    async def _intercept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, address: str,
                         port: int, rules: Sequence[SecretRule]) -> None:
        assert self.ca is not None
        if self._upstream_tls is None:
            self._upstream_tls = upstream_context()
        held = (host, writer)
        self._open_now.setdefault(writer.get_extra_info("peername")[0], set()).add(held)
        try:
            await intercept(reader, writer, host, address, port, rules, self.secret_value, self.ca, self._upstream_tls)
        finally:
            self._open_now.get(writer.get_extra_info("peername")[0], set()).discard(held)


def _destination(method: str, target: str, version: str, lines: list[str]) -> tuple[str, str, bytes] | None:
    """Where a request goes (host, port) and, for plain HTTP, the request to send there (without
    the proxy's own headers); None for a target that is neither host:port nor an http:// URL."""
    if method == "CONNECT":
        host, _, port_text = target.rpartition(":")
        rest = b""
    else:
        match = re.match(r"^http://([^/:?#]+|\[[^\]]+\])(?::(\d+))?([^#]*)", target, re.IGNORECASE)
        if match is None:
            return None
        host, port_text, path = match.group(1), match.group(2) or "80", match.group(3)
        path = path if path.startswith("/") else "/" + path
        kept = [line for line in lines[1:] if line and not line.lower().startswith(("proxy-", "connection:"))]
        rest = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
    return host.strip("[]").lower().rstrip("."), port_text, rest


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, if_silent: bytes = b"") -> None:
    """Copy until the end; ``if_silent`` is said instead when the reader ended (or broke) before
    a single byte, so that a client is told why rather than met with a closed connection."""
    moved, ended = False, "end of stream"
    try:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                writer.write(chunk)
                moved = True
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            if moved or not if_silent:
                raise
            ended = repr(exc)
        if not moved and if_silent:
            logger.info("an upstream ended without answering (%s)", ended)
            writer.write(if_silent)
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
