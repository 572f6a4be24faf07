"""Settings and paths no other test reaches, on one real server process: SANDBOX_FILE_MAX_BYTES,
SANDBOX_DISK_DIR, SANDBOX_MAX_CHANNELS and SANDBOX_CHANNEL_IDLE_SECONDS (seen as the server's
`podman exec` channel processes), a second image in SANDBOX_ALLOWED_IMAGES, a BASE_URL other than
the bound address, HEAD /files/..., and expose_port on another tenant's sandbox."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    RUN_ID,
    ServerProcess,
    free_port,
    podman,
    sandboxes_left,
    structured,
)
from fastmcp import Client
from support.sweep import release_namespace
from test_faults import argv_of, descendants

from mcp_container_sandbox.sandbox.paths import AGENT_PATH

pytestmark = pytest.mark.anyio

TOKENS = {"ann": "ann-token-0123456789abcdef", "ben": "ben-token-0123456789abcdef"}
SECOND_IMAGE = "localhost/mcp-sandbox-second-image:test"


@pytest.fixture
def second_image() -> Iterator[str]:
    """The run's image under another name: a second image on the allow-list."""
    podman("tag", os.environ["SANDBOX_IMAGE"], SECOND_IMAGE)
    yield SECOND_IMAGE
    podman("untag", SECOND_IMAGE, SECOND_IMAGE, check=False)


def channels_of(server: ServerProcess) -> set[str]:
    """The sandboxes (container names) the server holds an agent channel to: its `podman exec`
    processes running the agent."""
    held = set()
    for pid in descendants(server.process.pid):
        argv = argv_of(pid)
        if "exec" in argv and AGENT_PATH in argv:
            held.update(a for a in argv if a.startswith("mcp-sandbox-"))
    return held


async def test_the_settings_no_other_test_reaches(start_server, second_image: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-settings"
    disks = tmp_path / "disks"
    port = free_port()
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_FILE_MAX_BYTES": "1000",
                           "SANDBOX_DISK_DIR": str(disks), "SANDBOX_MAX_CHANNELS": "1",
                           "SANDBOX_CHANNEL_IDLE_SECONDS": "2", "SANDBOX_REAP_INTERVAL_SECONDS": "1",
                           "SANDBOX_ALLOWED_IMAGES": second_image, "AUTH_TOKENS": ",".join(TOKENS.values()),
                           "BASE_URL": f"http://localhost:{port}"}, port=port)
    base_url = f"http://localhost:{port}"
    on_disks = isinstance(httpx.get(server.url + "/health").json()["sandbox_disk_bytes"], int)
    try:
        async with Client(server.url + "/mcp", auth=TOKENS["ann"]) as ann, \
                Client(server.url + "/mcp", auth=TOKENS["ben"]) as ben:
            first = structured(await ann.call_tool("create_container", {}))["container_id"]
            second = structured(await ann.call_tool("create_container", {"image": second_image}))
            assert second["image"] == second_image
            if on_disks:  # sandbox disks on this host (root, loop devices): each under SANDBOX_DISK_DIR/<namespace>/
                assert (disks / namespace / f"mcp-sandbox-{first}.img").is_file()
            # SANDBOX_FILE_MAX_BYTES: 1,000 bytes are shared, 1,001 are refused naming the limit.
            await ann.call_tool("execute_command", {"container_id": first, "command":
                                                    "head -c 1000 /dev/zero > /tmp/ok; head -c 1001 /dev/zero > /tmp/big"})
            link = structured(await ann.call_tool("get_file_url", {"container_id": first, "path": "/tmp/ok"}))
            refused = await ann.call_tool("get_file_url", {"container_id": first, "path": "/tmp/big"},
                                          raise_on_error=False)
            assert refused.is_error and "1,001" in refused.content[0].text and "1,000" in refused.content[0].text
            # BASE_URL names the links, not the address the server is bound to; HEAD answers headers only.
            assert link["url"].startswith(base_url + "/files/"), link
            fetched = httpx.get(link["url"])
            assert fetched.status_code == 200 and fetched.content == b"\0" * 1000
            head = httpx.head(link["url"])
            assert head.status_code == 200 and head.headers["content-length"] == "1000" and head.content == b""
            # Another tenant's sandbox is one that does not exist, for expose_port too.
            theirs = await ben.call_tool("expose_port", {"container_id": first, "port": 8000}, raise_on_error=False)
            assert theirs.is_error and f"No sandbox with container_id '{first}'" in theirs.content[0].text
            # SANDBOX_MAX_CHANNELS=1: a command in the second sandbox closes the first's channel.
            await ann.call_tool("execute_command", {"container_id": second["container_id"], "command": "true"})
            assert channels_of(server) == {f"mcp-sandbox-{second['container_id']}"}
            # SANDBOX_CHANNEL_IDLE_SECONDS=2: unused, it closes (the reaper looks every second).
            deadline = time.monotonic() + 10
            while channels_of(server):
                assert time.monotonic() < deadline, channels_of(server)
                time.sleep(0.2)
            ran = structured(await ann.call_tool("execute_command", {"container_id": first, "command": "echo back"}))
            assert ran["stdout"] == "back\n"  # it reopens on demand
            for container_id in (first, second["container_id"]):
                await ann.call_tool("destroy_container", {"container_id": container_id})
        assert sandboxes_left(namespace) == []
        deadline = time.monotonic() + 30  # each disk goes after its container, in the background
        while (left := list((disks / namespace).glob("mcp-sandbox-*"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == []
    finally:
        server.stop()
        release_namespace(str(disks), namespace)
