"""Preview URLs (issue 14): a port inside a sandbox as a URL, through a real MCP client and
plain HTTP and WebSocket clients, with a small test server (tests/support/apps/preview-app.c) put into
the sandbox."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import ROOT, ServerProcess, structured
from fastmcp import Client
from support.preview_app import preview_app_binary, start_app
from websockets.asyncio.client import connect as ws_connect

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def app_binary() -> bytes:
    return preview_app_binary()


async def expose(client: Client, container_id: str, port: int) -> dict[str, Any]:
    return structured(await client.call_tool("expose_port", {"container_id": container_id, "port": port}))


def fnv1a(data: bytes) -> int:
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def test_preview_urls_carry_http_and_websockets(start_server, app_binary: bytes) -> None:  # type: ignore[no-untyped-def]
    proc: ServerProcess = start_server({"SANDBOX_MAX_PORTS": "4"})
    async with Client(proc.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        # Exposed before anything listens: a 502 at once that names the port and what to do.
        link = await expose(client, container_id, 8000)
        assert re.fullmatch(rf"{re.escape(proc.url)}/ports/[0-9a-f]{{40}}/", link["url"]) and link["port"] == 8000
        started = time.monotonic()
        refused = httpx.get(link["url"] + "hello")
        assert refused.status_code == 502 and time.monotonic() - started < 2
        assert "port 8000" in refused.json()["error"] and "Start the server" in refused.json()["error"]

        await start_app(client, container_id, app_binary, "8000", "8001 127.0.0.1")
        assert (await expose(client, container_id, 8000))["url"] == link["url"]  # the same link again
        local = await expose(client, container_id, 8001)
        url, prefix = link["url"], link["url"][len(proc.url):-1]
        async with httpx.AsyncClient(timeout=60) as http:
            hello = await http.get(url + "hello")
            assert hello.status_code == 200 and hello.text.startswith("hello ")
            assert hello.headers["x-app"] == "preview-test" and hello.headers.get_list("set-cookie") == ["a=1", "b=2"]
            # Keep-alive: the app sees one connection (one process) serving the next requests.
            pids = [(await http.get(url + "hello")).text.split()[1:] for _ in range(3)]
            assert len({pid for pid, _ in pids}) == 1 and [int(n) for _, n in pids] == sorted(int(n) for _, n in pids)
            # Every method, headers both ways; the app is told who asked.
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
                echoed = await http.request(method, url + "headers", headers={"X-Test": "yes"}, content=b"x" if method in ("POST", "PUT", "PATCH") else None)
                lines = echoed.text.lower().splitlines()
                assert lines[0] == f"{method.lower()} /headers http/1.1" and "x-test: yes" in lines, echoed.text
                assert "host: 127.0.0.1:8000" in lines and f"x-forwarded-prefix: {prefix}" in lines, echoed.text
            head = await http.head(url + "big/1000")
            assert head.status_code == 200 and head.headers["content-length"] == "1000" and head.content == b""
            assert (await http.get(url + "chunked")).text == "one, two, three"
            assert (await http.get(url + "missing")).status_code == 404
            redirect = await http.get(url + "redirect")
            assert redirect.status_code == 302 and redirect.headers["location"] == f"{prefix}/hello"
            slashless = await http.get(url.rstrip("/"))
            assert slashless.status_code == 308 and slashless.headers["location"] == prefix + "/"
            # A service listening on 127.0.0.1 only is reached alike.
            assert (await http.get(local["url"] + "hello")).text.startswith("hello ")
            # Uploads stream in, chunked or sized.
            blob = os.urandom(5 * 1024 * 1024)

            async def pieces() -> Any:
                for start in range(0, len(blob), 256 * 1024):
                    yield blob[start:start + 256 * 1024]

            expected = f"{len(blob)} {fnv1a(blob)}"
            assert (await http.post(url + "upload", content=pieces())).text == expected
            assert (await http.put(url + "upload", content=blob)).text == expected
            # Server-sent events arrive as they are written, not at the end.
            arrivals = []
            async with http.stream("GET", url + "sse") as events:
                assert events.headers["content-type"] == "text/event-stream"
                async for line in events.aiter_lines():
                    if line.startswith("data:"):
                        arrivals.append((time.monotonic(), line))
            assert [line for _, line in arrivals] == [f"data: event {i}" for i in range(5)]
            assert arrivals[-1][0] - arrivals[0][0] > 0.9, arrivals
            # Many requests at once.
            answers: list[int] = []

            async def one() -> None:
                answers.append((await http.get(url + "hello")).status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(32):
                    tg.start_soon(one)
            assert answers == [200] * 32
            # A large download streams through: the server's memory stays flat.
            before, peak, size = rss_mb(proc.process.pid), 0.0, 0
            async with http.stream("GET", url + f"big/{200 * 1024 * 1024}") as big:
                async for chunk in big.aiter_raw():
                    size += len(chunk)
                    peak = max(peak, rss_mb(proc.process.pid))
            assert size == 200 * 1024 * 1024 and peak - before < 40, (before, peak)

        # WebSockets: text and binary messages both ways.
        async with ws_connect(url.replace("http://", "ws://") + "ws", max_size=None) as ws:
            await ws.send("hello over websocket")
            assert await ws.recv() == "hello over websocket"
            payload = os.urandom(300_000)
            await ws.send(payload)
            assert await ws.recv() == payload

        # check_container lists the links; the cap and impossible ports are clear errors.
        listed = structured(await client.call_tool("check_container", {"container_id": container_id}))["ports"]
        assert listed == [{"port": 8000, "url": link["url"]}, {"port": 8001, "url": local["url"]}]
        await expose(client, container_id, 8002)
        await expose(client, container_id, 8003)
        capped = await client.call_tool("expose_port", {"container_id": container_id, "port": 8004}, raise_on_error=False)
        assert capped.is_error and "SANDBOX_MAX_PORTS" in capped.content[0].text
        for port in (0, 70000):
            bad = await client.call_tool("expose_port", {"container_id": container_id, "port": port}, raise_on_error=False)
            assert bad.is_error and "port" in bad.content[0].text
        unknown = await client.call_tool("expose_port", {"container_id": "0" * 32, "port": 80}, raise_on_error=False)
        assert unknown.is_error and "No sandbox with container_id" in unknown.content[0].text

        # A sandbox without any network is reached alike (nothing leaves it but through its loopback).
        offline = structured(await client.call_tool("create_container", {"network": False}))["container_id"]
        await start_app(client, offline, app_binary, "9000")
        assert httpx.get((await expose(client, offline, 9000))["url"] + "hello").text.startswith("hello ")

        # Links die with their sandbox.
        await client.call_tool("destroy_container", {"container_id": container_id})
        gone = httpx.get(url + "hello")
        assert gone.status_code == 404 and "expose_port" in gone.json()["error"]
        assert httpx.get(proc.url + "/ports/" + "f" * 40 + "/").status_code == 404
        await client.call_tool("destroy_container", {"container_id": offline})


async def test_preview_links_survive_a_restart_and_can_require_the_owners_token(start_server, app_binary: bytes) -> None:  # type: ignore[no-untyped-def]
    tokens = {"PREVIEW_REQUIRE_AUTH": "true", "AUTH_TOKENS": "preview-owner-0123456789,preview-other-0123456789"}
    proc: ServerProcess = start_server(tokens)
    async with Client(proc.url + "/mcp", auth="preview-owner-0123456789") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await start_app(client, container_id, app_binary, "8000")
        url = (await expose(client, container_id, 8000))["url"] + "hello"
    owner = {"Authorization": "Bearer preview-owner-0123456789"}
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer preview-other-0123456789"}).status_code == 401
    assert httpx.get(url, headers=owner).text.startswith("hello ")
    assert proc.stop(signal.SIGTERM) == 0
    again: ServerProcess = start_server({**tokens, "SANDBOX_NAMESPACE": proc.env["SANDBOX_NAMESPACE"]}, port=proc.port)
    assert httpx.get(url, headers=owner).text.startswith("hello ")
    async with Client(again.url + "/mcp", auth="preview-owner-0123456789") as client:
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert httpx.get(url, headers=owner).status_code == 404


async def test_host_based_preview_urls_under_preview_domain(start_server, app_binary: bytes) -> None:  # type: ignore[no-untyped-def]
    proc: ServerProcess = start_server({"PREVIEW_DOMAIN": "preview.test"})
    async with Client(proc.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await start_app(client, container_id, app_binary, "8000")
        link = await expose(client, container_id, 8000)
        host = re.fullmatch(r"http://([0-9a-f]{40}\.preview\.test)/", link["host_url"]).group(1)  # type: ignore[union-attr]
        # The app is served at the root of its own host (a wildcard DNS record points it here).
        at_root = httpx.get(proc.url + "/hello", headers={"Host": host})
        assert at_root.status_code == 200 and at_root.text.startswith("hello ")
        echoed = httpx.get(proc.url + "/headers", headers={"Host": host}).text.lower()
        assert f"x-forwarded-host: {host}" in echoed and "x-forwarded-prefix" not in echoed
        redirect = httpx.get(proc.url + "/redirect", headers={"Host": host})
        assert redirect.headers["location"] == "/hello"  # no prefix to add
        # Other hosts still reach the server itself.
        assert httpx.get(proc.url + "/health").status_code == 200
        assert httpx.get(proc.url + "/hello", headers={"Host": "f" * 40 + ".preview.test"}).status_code == 404
        await client.call_tool("destroy_container", {"container_id": container_id})


@pytest.mark.slow
async def test_preview_urls_under_gvisor(start_server, app_binary: bytes) -> None:  # type: ignore[no-untyped-def]
    """gVisor's network stack is its own: the agent relays the connections (podman exec)."""
    if not Path("/usr/bin/runsc").exists():
        pytest.fail("gVisor (runsc) is not installed: run the tests with scripts/test.sh, which installs it.")
    proc: ServerProcess = start_server({"SANDBOX_RUNTIME": str(ROOT / "scripts" / "runsc-no-network"),
                                        "SANDBOX_NETWORK": "none"})
    async with Client(proc.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        url = (await expose(client, container_id, 8000))["url"]
        refused = httpx.get(url + "hello", timeout=30)
        assert refused.status_code == 502 and "port 8000" in refused.json()["error"], refused.text
        await start_app(client, container_id, app_binary, "8000")
        assert httpx.get(url + "hello", timeout=30).text.startswith("hello ")
        blob = os.urandom(2 * 1024 * 1024)
        assert httpx.post(url + "upload", content=blob, timeout=60).text == f"{len(blob)} {fnv1a(blob)}"
        async with ws_connect(url.replace("http://", "ws://") + "ws") as ws:
            await ws.send("under gvisor")
            assert await ws.recv() == "under gvisor"
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert "go through the sandbox agent's relay" in proc.log_text()

