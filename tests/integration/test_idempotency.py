"""create_container(idempotency_key=...): a retried create gets the sandbox the first one made, never a
second; the key is a tenant's own; calls with one key at once get one sandbox; the same key with other
arguments is refused; a key lives as long as its sandbox, and across a restart of the server. Through a
real server process and FastMCP's client."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from conftest import RUN_ID, sandbox_names, structured, wait_until
from fastmcp import Client
from fastmcp.exceptions import ToolError

pytestmark = pytest.mark.anyio
TOKENS = ("token-a-0123456789", "token-b-0123456789")


async def create(client: Client, **arguments: Any) -> str:
    return structured(await client.call_tool("create_container", arguments))["container_id"]


async def refused(client: Client, **arguments: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await client.call_tool("create_container", arguments)
    return str(caught.value)


async def test_a_retried_create_gets_the_sandbox_the_first_made(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-idempotency"
    env = {"SANDBOX_NAMESPACE": namespace, "AUTH_TOKENS": ",".join(TOKENS)}
    server = start_server(env)
    key, together = str(uuid.uuid4()), str(uuid.uuid4())
    async with Client(server.url + "/mcp", auth=TOKENS[0]) as mine, Client(server.url + "/mcp", auth=TOKENS[1]) as theirs:
        first = await create(mine, idempotency_key=key, ttl_seconds=600)
        assert await create(mine, idempotency_key=key, ttl_seconds=600) == first
        assert await create(mine, ttl_seconds=600) != first  # no key: a new one each time
        made: list[str] = []

        async def create_together() -> None:
            made.append(await create(mine, idempotency_key=together))

        async with anyio.create_task_group() as group:  # a client retrying before the first answer came
            for _ in range(4):
                group.start_soon(create_together)
        assert len(made) == 4 and len(set(made)) == 1
        assert await create(theirs, idempotency_key=key, ttl_seconds=600) not in (first, made[0])  # their own key
        said = await refused(mine, idempotency_key=key, ttl_seconds=300)
        assert f"idempotency_key was used for sandbox {first}, created with other arguments" in said
        for bad in ("has space", "", "x" * 129, "naïve"):
            assert "idempotency_key" in await refused(mine, idempotency_key=bad)
        assert len(sandbox_names(namespace)) == 4  # first, the keyless one, the one made together, theirs

        await mine.call_tool("destroy_container", {"container_id": first})
        again = await create(mine, idempotency_key=key, ttl_seconds=600)  # its sandbox is gone: the key with it
        assert again != first
    server.stop()
    restarted = start_server(env, port=server.port)
    async with Client(restarted.url + "/mcp", auth=TOKENS[0]) as mine:
        assert await create(mine, idempotency_key=together) == made[0]  # kept across the restart
        assert await create(mine, idempotency_key=key, ttl_seconds=600) == again
        for container_id in {made[0], again}:
            await mine.call_tool("destroy_container", {"container_id": container_id})
    await wait_until(lambda: len(sandbox_names(namespace)) == 2)  # the keyless one and theirs
