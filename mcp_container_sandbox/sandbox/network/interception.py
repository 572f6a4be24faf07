"""The egress proxy's part for hosts that carry a sandbox's secrets (secrets.py): after the CONNECT,
the proxy ends the sandbox's TLS with a certificate of its own CA for the host (certificates.py),
reads each HTTP/1.1 request, puts the secrets in, and sends it on over TLS to the real host,
whose certificate it checks against this host's trust store. Answers come back as they are.
Every other host stays an untouched tunnel (proxy.py). Requests are relayed one after another on
a kept-alive connection; bodies by Content-Length or chunked, answers also until the upstream ends."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence

from .certificates import ProxyCA
from .secret_rules import SecretRule

HEAD_LIMIT = 64 * 1024
CHUNK = 256 * 1024
IDLE_SECONDS = 120.0
CONNECT_SECONDS = 15.0


class BadRequest(Exception):
    pass


def _answer(status: str, text: str) -> bytes:
    body = f"mcp-sandbox egress proxy: {text}\n".encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def inject(headers: list[tuple[str, str]], rules: Sequence[SecretRule], value: Callable[[str], str | None]
           ) -> list[tuple[str, str]]:
    """The request's headers with each rule's value in place of its placeholder anywhere, and in its
    header as its format says (the header set once, whatever the client sent in it)."""
    for rule in rules:
        real = value(rule.name)
        if real is None:
            raise LookupError(rule.name)
        headers = [(name, text.replace(rule.placeholder, real)) for name, text in headers
                   if name.lower() != rule.header.lower()]
        headers.append((rule.header, rule.format.replace("{value}", real)))
    return headers


async def _head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    """A message's start line and headers; None when the stream ended cleanly before one."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("the message's head did not arrive whole") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("the message's head is too long") from None
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, colon, text = line.partition(":")
            if not colon or not name or name != name.strip():
                raise BadRequest(f"a malformed header line {line[:80]!r}")
            headers.append((name, text.strip()))
    return lines[0], headers


def _serialize(start: str, headers: list[tuple[str, str]]) -> bytes:
    return (start + "\r\n" + "".join(f"{name}: {text}\r\n" for name, text in headers) + "\r\n").encode("latin-1")


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    found = [text for key, text in headers if key.lower() == name]
    return found[-1] if found else None


async def _body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: list[tuple[str, str]],
                until_end: bool) -> None:
    """Copy a message's body: chunked, by Content-Length, else (an answer only) until the stream ends."""
    coding, length = (_get(headers, "transfer-encoding") or "").lower(), _get(headers, "content-length")
    if "chunked" in coding:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(b"\r\n")
                break
            writer.write(await reader.readexactly(size + 2))
            await writer.drain()
    elif length is not None:
        if not length.isdigit():
            raise BadRequest("a Content-Length that is not a number")
        left = int(length)
        while left:
            chunk = await reader.read(min(CHUNK, left))
            if not chunk:
                raise ConnectionError("the body ended early")
            writer.write(chunk)
            left -= len(chunk)
            await writer.drain()
    elif until_end:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    await writer.drain()


async def _connect(writer: asyncio.StreamWriter, host: str, address: str, port: int, upstream_tls: ssl.SSLContext
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """TLS to the real host, its certificate checked; None when it failed and the sandbox was told why."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(
            address, port, ssl=upstream_tls, server_hostname=host, limit=HEAD_LIMIT), CONNECT_SECONDS)
    except ssl.SSLCertVerificationError as exc:
        writer.write(_answer("502 Bad Gateway", f"{host}'s certificate failed verification ({exc.verify_message}); "
                                                "the request was not sent"))
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        writer.write(_answer("502 Bad Gateway", f"could not reach {host}:{port} over TLS ({exc or 'timeout'})"))
    return None


async def _answer_ends_connection(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                                  headers: list[tuple[str, str]], answer: tuple[str, list[tuple[str, str]]]) -> bool:
    """Pass the upstream's answer on, its body too; True when the connection ends with it."""
    status_line, answer_headers = answer
    writer.write(_serialize(status_line, answer_headers))
    code = status_line.split(" ")[1] if len(status_line.split(" ")) > 1 else ""
    bodiless = method == "HEAD" or code.startswith("1") or code in ("204", "304")
    if not bodiless:
        await _body(up_reader, writer, answer_headers, until_end=True)
    await writer.drain()
    closing = [(_get(h, "connection") or "").lower() for h in (headers, answer_headers)]
    unframed = _get(answer_headers, "content-length") is None and \
        "chunked" not in (_get(answer_headers, "transfer-encoding") or "").lower()
    return "close" in closing or (unframed and not bodiless)


async def intercept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, address: str, port: int,
                    rules: Sequence[SecretRule], value: Callable[[str], str | None], ca: ProxyCA,
                    upstream_tls: ssl.SSLContext) -> None:
    """Serve one sandbox connection to a host with secrets, after the proxy answered its CONNECT."""
    await writer.start_tls(ca.context_for(host))
    up_reader: asyncio.StreamReader | None = None
    upstream: asyncio.StreamWriter | None = None
    try:
        while True:
            try:
                request = await _head(reader)
            except BadRequest as exc:
                writer.write(_answer("400 Bad Request", str(exc)))
                return
            if request is None:
                return
            start, headers = request
            # No "Expect: 100-continue" upstream: its interim answer would come before the body is sent
            # (clients send the body after a second without it).
            headers = [(name, text) for name, text in headers if name.lower() != "expect"]
            method = start.split(" ", 1)[0].upper()
            try:
                headers = inject(headers, rules, value)
            except LookupError as missing:
                writer.write(_answer("502 Bad Gateway", f"the secret {missing} is no longer on the server; the request "
                                                        "was not sent"))
                return
            if upstream is None:
                opened = await _connect(writer, host, address, port, upstream_tls)
                if opened is None:
                    return
                up_reader, upstream = opened
            assert up_reader is not None
            upstream.write(_serialize(start, headers))
            await _body(reader, upstream, headers, until_end=False)
            answer = await _head(up_reader)
            if answer is None:
                writer.write(_answer("502 Bad Gateway", f"{host} closed the connection without answering"))
                return
            if await _answer_ends_connection(up_reader, writer, method, headers, answer):
                return
    except (BadRequest, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.write(_answer("502 Bad Gateway", f"the exchange with {host} broke off ({exc})"))
    finally:
        if upstream is not None:
            upstream.close()
