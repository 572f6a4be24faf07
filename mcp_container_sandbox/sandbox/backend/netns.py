"""A TCP connection made inside another network namespace, from the host: how a preview URL
reaches a port that a sandbox serves on its own loopback, with no port published on the host.

A socket belongs to the network namespace of the thread that created it, for its whole life.
So one thread of our own (never a thread of the shared pool: if it could not switch back, it
must never run anything else) enters the sandbox's namespace, creates the socket, and returns
to the server's; the event loop then connects it to 127.0.0.1:<port>, inside the sandbox.
It needs CAP_SYS_ADMIN (root, or a nested deployment's SYS_ADMIN) and a runtime whose network
namespace is the kernel's (runc, crun; not gVisor, whose network stack is its own).

Also the files under /run/netns that hold namespaces: one put back (restore_file) or deleted
(delete_namespace, for the namespaces own_netns.py makes).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import anyio
from anyio.abc import ByteStream, SocketAttribute

from ..errors import PortClosed

logger = logging.getLogger("mcp_sandbox.netns")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-sandbox-netns")
_broken = False  # the netns thread could not get back to the server's namespace


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _socket_in(netns_fd: int, family: int) -> socket.socket:
    global _broken
    if _broken:
        raise OSError("the network namespace thread is unusable")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        finally:
            try:
                _setns(own)
            except OSError:
                _broken = True
                logger.critical("could not return to the server's network namespace; preview URLs fall back to relays")
                raise
    finally:
        os.close(own)
    return sock


MS_BIND = 0x1000
MNT_DETACH = 2


def restore_file(path: str, pid: int) -> bool:
    """Put back a network namespace's file under /run/netns that something removed (``ip netns
    delete``) while its container runs: Podman lists no container at all while one's file is
    missing. The namespace itself lives on in the container's processes; the file is a bind mount
    of it. False where this server cannot (not root, another host's Podman, the process gone)."""
    source = f"/proc/{pid}/ns/net"
    if pid <= 0 or not os.path.exists(source) or os.path.exists(path) or not os.path.isdir(os.path.dirname(path)):
        return False
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except OSError:
        return False
    if _libc.mount(source.encode(), path.encode(), None, MS_BIND, None) != 0:
        logger.warning("could not put back %s: %s", path, os.strerror(ctypes.get_errno()))
        os.unlink(path)
        return False
    return True


def delete_namespace(name: str, folder: str = "/run/netns") -> None:
    """``ip netns delete``, in the process: unmount the file that holds the namespace, remove it."""
    path = f"{folder}/{name}"
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        error = ctypes.get_errno()  # EINVAL: not mounted; ENOENT: no such file
        raise OSError(error, os.strerror(error), path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Netns:
    """A network namespace held open by a file descriptor (it outlives the process it came from,
    and never turns into another's when a process id is reused)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino

    def current(self) -> bool:
        """Whether the process is still there, in this namespace."""
        try:
            return os.stat(f"/proc/{self.pid}/ns/net").st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        os.close(self.fd)

    async def connect(self, port: int) -> SocketBytes:
        """A connection to 127.0.0.1:port (else [::1]:port) in the namespace; PortClosed if refused."""
        refused: OSError | None = None
        loop = asyncio.get_running_loop()
        for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
            sock = await loop.run_in_executor(_thread, _socket_in, self.fd, family)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                refused = refused or exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketBytes(sock)
        raise PortClosed(port, os.strerror(refused.errno) if refused and refused.errno else "refused")


class SocketBytes(ByteStream):
    """A connected socket as an anyio byte stream, read in large pieces: each receive takes what
    the socket holds, up to max_bytes, so a download is passed on in few, large pieces (asyncio's
    own transports read 256 KiB at a time, and a sender's 64 KiB writes arrive one by one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self._eof = sock, False
        self._loop = asyncio.get_running_loop()

    @property
    def extra_attributes(self):  # type: ignore[no-untyped-def]
        return {SocketAttribute.raw_socket: lambda: self.sock}

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._eof:
            raise anyio.EndOfStream
        try:
            data = await self._loop.sock_recv(self.sock, max_bytes)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            self._eof = True
            raise anyio.EndOfStream
        parts, size = [data], len(data)
        while size < max_bytes:
            try:
                more = self.sock.recv(max_bytes - size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # the next receive says so
            if not more:
                self._eof = True
                break
            parts.append(more)
            size += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    async def send(self, item: bytes) -> None:
        try:
            await self._loop.sock_sendall(self.sock, item)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        self.sock.close()


def usable() -> bool:
    """Whether this process may enter other network namespaces (tried on its own: a no-op)."""
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _thread.submit(_setns, own).result(timeout=5)
        return True
    except Exception:  # EPERM without CAP_SYS_ADMIN, or no setns
        return False
    finally:
        os.close(own)
