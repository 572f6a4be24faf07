"""The FastMCP internals this server reads, in one place: the progress token of the request being
answered and the transport in use. Neither has a public accessor in FastMCP 4;
tests/unit/test_fastmcp_private.py fails when FastMCP moves them (and when the two OAuth proxy steps
auth/proxy.py overrides move)."""

from __future__ import annotations

from typing import Any


def progress_requested(ctx: Any) -> bool:
    """Whether the tool call being answered carries a progress token (its client asked for progress)."""
    if ctx is None:
        return False
    try:
        meta = ctx.request_context._srctx.meta
    except (AttributeError, RuntimeError, LookupError):
        return False
    return bool(meta) and meta.get("progress_token") is not None


def is_stdio_transport() -> bool:
    """Whether this server was started over stdio (``fastmcp run server.py``)."""
    try:
        from fastmcp.server.context import _current_transport
    except ImportError:  # pragma: no cover - FastMCP moved it; the unit test says so
        return False
    return _current_transport.get() == "stdio"
