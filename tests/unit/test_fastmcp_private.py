"""The FastMCP internals the server reads (mcp_container_sandbox/fastmcp_private.py) are still where
it reads them: this fails when a FastMCP upgrade moves them, instead of progress and stdio file
URLs quietly stopping."""

from __future__ import annotations

from contextvars import ContextVar

import pytest
from fastmcp import Client, Context, FastMCP

from mcp_container_sandbox.fastmcp_private import is_stdio_transport, progress_requested

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_transport_variable_is_where_it_is_read() -> None:
    from fastmcp.server import context

    assert isinstance(context._current_transport, ContextVar)


async def test_progress_requested_sees_the_progress_token_of_the_call() -> None:
    server = FastMCP("probe")

    @server.tool
    async def probe(ctx: Context) -> dict[str, bool]:
        return {"progress": progress_requested(ctx), "stdio": is_stdio_transport()}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        return None

    async with Client(server) as client:
        # The SDK's session sends a progress token only with a callback (FastMCP's client always has one).
        plain = (await client.session.call_tool("probe", {})).structured_content
        asked = (await client.call_tool("probe", {}, progress_handler=on_progress)).structured_content
    assert plain == {"progress": False, "stdio": False}
    assert asked == {"progress": True, "stdio": False}


def test_no_context_is_no_progress() -> None:
    assert progress_requested(None) is False


def test_the_oauth_proxy_steps_the_sign_in_proxy_overrides_are_where_it_overrides_them() -> None:
    """auth/proxy.py refuses people not in OAUTH_ALLOWED_USERS at the provider's callback through these."""
    from fastmcp.server.auth.oauth_proxy import OAuthProxy

    assert callable(OAuthProxy._handle_idp_callback) and callable(OAuthProxy._create_upstream_oauth_client)
