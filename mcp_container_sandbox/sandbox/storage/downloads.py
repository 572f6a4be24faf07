"""Files in a sandbox: path checks, content types, and downloads streamed out of it."""

from __future__ import annotations

import logging
import mimetypes
import posixpath
import shlex
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..backend.podman_cli import kill_process
from ..errors import FileLinkNotFound, InvalidPath, PodmanUnavailable, SandboxError
from ..model import FileLink

logger = logging.getLogger("mcp_sandbox.files")

def check_absolute_path(path: str) -> None:
    """Refuse what is not a plain absolute path inside the sandbox, saying what to pass instead."""
    if not isinstance(path, str) or not path.strip():
        raise InvalidPath("The path is empty. Pass the absolute path of a file in the sandbox, e.g. /tmp/out.txt.")
    if "\0" in path:
        raise InvalidPath("The path contains a NUL character. Pass a plain absolute path.")
    if not path.startswith("/"):
        raise InvalidPath(
            f"The path {path[:200]!r} is relative. Pass an absolute path inside the sandbox, "
            f"e.g. {posixpath.join('/root', path)[:200]!r}."
        )
    if len(path.encode("utf-8", errors="surrogatepass")) > 4096:
        raise InvalidPath("The path is longer than 4096 bytes. Pass a shorter absolute path.")


def content_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(posixpath.basename(path), strict=False)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/json", "application/javascript", "application/xml"):
        return f"{guessed}; charset=utf-8"
    return guessed


DOWNLOAD_CHUNK_BYTES = 512 * 1024


def _widen_pipe(process: anyio.abc.Process) -> None:
    """Give a download's pipe 1 MiB instead of 64 KiB: fewer wake-ups per megabyte."""
    try:
        import fcntl

        transport = process._process._transport  # type: ignore[attr-defined]
        pipe = transport.get_pipe_transport(1).get_extra_info("pipe")
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1024 * 1024)
    except (AttributeError, OSError, ImportError):  # another event loop, or the limit is lower
        pass


class FileDownload:
    """One file streaming out of a sandbox through ``podman exec`` (``argv`` on this host), or through
    a byte stream the backend opens (``open_stream``: an exec session); memory stays flat."""

    def __init__(self, argv: list[str], link: FileLink, spawn_options: dict[str, Any] | None = None,
                 open_stream: Callable[[], Awaitable[anyio.abc.ByteStream]] | None = None) -> None:
        self.argv = argv
        self.link = link
        self.spawn_options = spawn_options or {}
        self.open_stream = open_stream
        self.size = 0
        self._stream: anyio.abc.ByteStream | None = None
        self._process: anyio.abc.Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None

    @property
    def filename(self) -> str:
        return posixpath.basename(self.link.path.rstrip("/")) or "download"

    async def start(self) -> None:
        logger.debug("run %s", shlex.join(self.argv))
        if self.open_stream is not None:
            try:
                self._stream = await self.open_stream()
            except SandboxError as exc:
                raise FileLinkNotFound(f"The file could not be read from its sandbox ({exc}).") from None
            self._stdout = BufferedByteReceiveStream(self._stream)
        else:
            try:
                self._process = await anyio.open_process(
                    self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    **self.spawn_options,
                )
            except FileNotFoundError:
                raise PodmanUnavailable(self.argv, None, "podman was not found") from None
            assert self._process.stdout is not None
            _widen_pipe(self._process)
            self._stdout = BufferedByteReceiveStream(self._process.stdout)
        try:
            with anyio.fail_after(30):
                header = (await self._stdout.receive_until(b"\n", 200)).decode(errors="replace")
        except (anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.EndOfStream, TimeoutError):
            await self.aclose()
            raise FileLinkNotFound("The file could not be read from its sandbox (the sandbox may be gone).") from None
        except BaseException:
            await self.aclose()
            raise
        verdict = header.split(" ")
        if verdict[0] != "ok" or len(verdict) != 2 or not verdict[1].isdigit():
            await self.aclose()
            raise FileLinkNotFound("The file no longer exists in its sandbox or is no longer a regular file.")
        self.size = int(verdict[1])

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._stdout is not None
        remaining = self.size
        try:
            while remaining > 0:
                # Pipes hand over 64 KiB at a time; a few of them per HTTP write halves the
                # per-chunk overhead of the ASGI server.
                parts: list[bytes] = []
                gathered = 0
                try:
                    while gathered < DOWNLOAD_CHUNK_BYTES and gathered < remaining:
                        part = await self._stdout.receive(remaining - gathered)
                        parts.append(part)
                        gathered += len(part)
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    remaining = 0
                if parts:
                    remaining -= gathered
                    yield b"".join(parts)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        process, self._process = self._process, None
        await kill_process(process)
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
