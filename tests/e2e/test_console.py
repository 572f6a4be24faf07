"""The web console (/console/) in a real browser: Debian's Chromium, headless, driven by Playwright
(PyPI) with no browser download. A person signs in, sees the sandbox an MCP client makes, types in a
terminal of their own, resizes it, interrupts a command, and destroys the sandbox, which the MCP
client is then told. Screenshots go to .pytest_cache/artifacts/."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from conftest import ROOT, RUN_ID, ServerProcess, free_port, structured
from fastmcp import Client
from support.browser import launch_chromium
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.anyio

ALICE, BOB = "console-alice-0123456789abcdef", "console-bob-0123456789abcdef"
ADMIN = "console-admin-0123456789abcdef"
WRITE_MAX = 65536
ARTIFACTS = ROOT / ".pytest_cache" / "artifacts"
SCREEN = """() => { const b = window.terminalForTests.term.buffer.active; const lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); return lines.join('\\n'); }"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess({"SANDBOX_NAMESPACE": f"{RUN_ID}-console", "SANDBOX_POOL_SIZE": "0",
                          "SANDBOX_PROXY_PORT": str(free_port()), "AUTH_TOKENS": f"{ALICE},{BOB}",
                          "SANDBOX_WRITE_MAX_BYTES": str(WRITE_MAX), "CONSOLE_ADMIN_TOKENS": ADMIN}).start()
    yield proc
    proc.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield await browser.new_page(viewport={"width": 1000, "height": 800})
        finally:
            await browser.close()


async def signed_in(page: Any, server: ServerProcess, token: str) -> None:
    await page.goto(server.url + "/console/")
    await page.fill("#token", token)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#console", state="visible")


async def screen_shows(page: Any, text: str, seconds: float = 10) -> str:
    await page.wait_for_function(f"() => ({SCREEN})().includes({json.dumps(text)})", timeout=seconds * 1000)
    return await page.evaluate(SCREEN)


async def type_line(page: Any, line: str) -> None:
    await page.keyboard.type(line)
    await page.keyboard.press("Enter")


async def test_a_person_watches_types_interrupts_and_destroys(server: ServerProcess, page: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await signed_in(page, server, ALICE)
    async with Client(server.url + "/mcp", auth=ALICE) as agent:
        container_id = structured(await agent.call_tool("create_container", {}))["container_id"]
        # The list is refreshed every half second: the agent's sandbox appears.
        await page.wait_for_selector(f'tr[data-id="{container_id}"]', timeout=5000)
        await page.click(f'tr[data-id="{container_id}"]')

        # The agent's command, seen line by line while it runs...
        slow = "for i in 1 2 3 4 5; do echo line-$i; sleep 0.6; done"
        async with anyio.create_task_group() as group:
            group.start_soon(agent.call_tool, "execute_command", {"container_id": container_id, "command": slow})
            block = page.locator("[data-command]", has_text="line-1").first
            await block.wait_for(timeout=10000)
            assert "line-5" not in await block.locator(".stdout").text_content()
            await page.locator("[data-command]", has_text="line-5").wait_for(timeout=10000)
        await page.locator("[data-command][data-status=completed]", has_text="line-5").wait_for(timeout=5000)
        # ... and one interrupted from the console (Ctrl-C, a signal to the command).
        interrupted: dict[str, Any] = {}

        async def agent_waits() -> None:
            interrupted.update(structured(await agent.call_tool(
                "execute_command", {"container_id": container_id, "command": "echo started; sleep 300"})))

        async with anyio.create_task_group() as group:
            group.start_soon(agent_waits)
            running = page.locator("[data-command][data-status=running]", has_text="started")
            await running.wait_for(timeout=10000)
            await running.locator(".interrupt").click()
        assert interrupted["status"] != "running" and interrupted["exit_code"] != 0, interrupted
        await page.locator("[data-command]:not([data-status=running])", has_text="started").wait_for(timeout=5000)
        await page.screenshot(path=str(ARTIFACTS / "console-commands.png"), full_page=True)
        await page.click("#open-terminal")
        await page.wait_for_function("() => window.terminalForTests && window.terminalForTests.socket.readyState === 1")
        await page.click("#terminal")
        await type_line(page, "echo h''i")  # the typed line differs from what it prints
        await screen_shows(page, "\nhi")
        await page.screenshot(path=str(ARTIFACTS / "console-terminal.png"), full_page=True)

        # A bigger window: the terminal is fitted to it, and the sandbox's terminal told its size.
        before = await page.evaluate("() => window.terminalForTests.term.cols")
        await page.set_viewport_size({"width": 1400, "height": 1000})
        size = await page.wait_for_function(
            "(before) => { const t = window.terminalForTests.term; return t.cols > before && [t.rows, t.cols]; }",
            arg=before)
        rows, cols = await size.json_value()
        await type_line(page, "stty size")
        await screen_shows(page, f"{rows} {cols}")

        # A program that fills the screen, and leaves it.
        await type_line(page, "top")
        await screen_shows(page, "Mem:")
        await page.keyboard.press("q")
        await type_line(page, "echo top-is-gone")
        await screen_shows(page, "\ntop-is-gone")

        await type_line(page, "sleep 100; echo not-interrupted")
        await page.wait_for_timeout(300)
        await page.keyboard.press("Control+C")
        await type_line(page, "echo after-the-interrupt")
        shown = await screen_shows(page, "\nafter-the-interrupt")
        assert "not-interrupted" not in shown.replace("echo not-interrupted", "")
        await page.screenshot(path=str(ARTIFACTS / "console-interrupted.png"), full_page=True)

        # Files: one uploaded from the console is the agent's to read; one the agent wrote downloads.
        await page.set_input_files("#upload", files=[{"name": "from-console.txt", "mimeType": "text/plain",
                                                      "buffer": b"uploaded by a person\n"}])
        await page.locator('#file-rows tr[data-path="/root/from-console.txt"]').wait_for(timeout=10000)
        read = structured(await agent.call_tool("read_file", {"container_id": container_id,
                                                              "path": "/root/from-console.txt"}))
        assert read["content"] == "uploaded by a person\n"
        await agent.call_tool("write_file", {"container_id": container_id, "path": "/root/report.txt",
                                             "content": "written by the agent\n"})
        await page.click("#files-form button")
        async with page.expect_download() as downloading:
            await page.click('#file-rows tr[data-path="/root/report.txt"]')
        download = await downloading.value
        assert (await download.path()).read_text() == "written by the agent\n"
        await page.screenshot(path=str(ARTIFACTS / "console-files.png"), full_page=True)

        # The sandbox's preview links, as the agent's expose_port made them.
        exposed = structured(await agent.call_tool("expose_port", {"container_id": container_id, "port": 8080}))
        preview = page.locator('#previews a[data-port="8080"]')
        await preview.wait_for(timeout=5000)
        assert server.url + await preview.get_attribute("href") == exposed["url"]

        # A snapshot from the console is the agent's to continue from.
        await page.click("#snapshot")
        note = page.locator("#detail-note", has_text="Snapshot ")
        await note.wait_for(timeout=30000)
        snapshot_id = (await note.text_content()).split()[1]
        listed = structured(await agent.call_tool("list_snapshots", {}))["snapshots"]
        assert snapshot_id in [snapshot["snapshot_id"] for snapshot in listed]
        await agent.call_tool("delete_snapshot", {"snapshot_id": snapshot_id})

        # The terminal is a session of its own: the agent's commands go on beside it.
        ran = structured(await agent.call_tool("execute_command", {"container_id": container_id, "command": "echo agent"}))
        assert ran["stdout"] == "agent\n"

        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#destroy")
        await page.wait_for_selector(f'tr[data-id="{container_id}"]', state="detached", timeout=10000)
        gone = await agent.call_tool("execute_command", {"container_id": container_id, "command": "true"},
                                     raise_on_error=False)
        assert gone.is_error and "destroyed" in gone.content[0].text
        await page.screenshot(path=str(ARTIFACTS / "console-destroyed.png"), full_page=True)


async def test_a_wrong_token_is_refused_with_the_sign_in_page(server: ServerProcess, page: Any) -> None:
    await page.goto(server.url + "/console/")
    await page.fill("#token", "not-a-token-of-this-server")
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    assert await page.is_hidden("#console")
    assert httpx.get(server.url + "/console/api/sandboxes", headers={"Authorization": "Bearer nope"}).status_code == 401
    response = httpx.get(server.url + "/console/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in response.text  # no inline script: every script is a file of its own


async def test_another_tenants_sandbox_is_404_and_a_cross_origin_terminal_403(server: ServerProcess) -> None:
    async with Client(server.url + "/mcp", auth=ALICE) as alice:
        container_id = structured(await alice.call_tool("create_container", {}))["container_id"]
        try:
            as_bob = {"Authorization": f"Bearer {BOB}"}
            async with httpx.AsyncClient(base_url=server.url + "/console/api/", timeout=30) as http:
                assert (await http.post(f"sandboxes/{container_id}/tickets", headers=as_bob)).status_code == 404
                assert (await http.delete(f"sandboxes/{container_id}", headers=as_bob)).status_code == 404
                listed = (await http.get("sandboxes", headers=as_bob)).json()["sandboxes"]
                assert container_id not in [s["container_id"] for s in listed]
                ticket = (await http.post(f"sandboxes/{container_id}/tickets",
                                          headers={"Authorization": f"Bearer {ALICE}"})).json()["ticket"]
            terminal = f"ws://127.0.0.1:{server.port}/console/api/terminal?ticket={ticket}"
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(terminal, origin="http://evil.example"):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
            # The ticket was not spent by the refused upgrade... but a ticket is good once only.
            async with ws_connect(terminal, origin=server.url) as session:  # type: ignore[arg-type]
                await session.send(b"echo once\n")
                seen = b""
                while b"once\r\n" not in seen.replace(b"echo once", b""):
                    seen += await session.recv()  # type: ignore[operator]
            # Twenty people watching the sandbox's commands cost one watcher, not twenty podman execs.
            async with httpx.AsyncClient(base_url=server.url + "/console/api/", timeout=30) as http:
                tickets = [(await http.post(f"sandboxes/{container_id}/tickets", params={"for": "commands"},
                                            headers={"Authorization": f"Bearer {ALICE}"})).json()["ticket"]
                           for _ in range(20)]
            async with contextlib.AsyncExitStack() as viewers:
                for feed_ticket in tickets:
                    await viewers.enter_async_context(ws_connect(  # type: ignore[arg-type]
                        f"ws://127.0.0.1:{server.port}/console/api/commands?ticket={feed_ticket}", origin=server.url))
                await anyio.sleep(1)
                execs = subprocess.run(["pgrep", "-fc", f"podman.* exec .*{container_id}"], capture_output=True,
                                       text=True).stdout.strip()
                assert int(execs or 0) <= 2, execs  # the sandbox's agent channel (and its shell wrapper)
            # An upload larger than SANDBOX_WRITE_MAX_BYTES: 413, and nothing written.
            async with httpx.AsyncClient(base_url=server.url + "/console/api/", timeout=30) as http:
                too_big = await http.put(f"sandboxes/{container_id}/files", params={"path": "/root/big.bin"},
                                         content=b"x" * (WRITE_MAX + 1), headers={"Authorization": f"Bearer {ALICE}"})
                assert too_big.status_code == 413 and "SANDBOX_WRITE_MAX_BYTES" in too_big.json()["error"]
            listed = structured(await alice.call_tool("list_files", {"container_id": container_id, "path": "/root"}))
            assert "big.bin" not in [entry["name"] for entry in listed["entries"]]
            with pytest.raises(InvalidStatus) as spent:
                async with ws_connect(terminal, origin=server.url):  # type: ignore[arg-type]
                    pass
            assert spent.value.response.status_code == 401
        finally:
            await alice.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


async def test_an_admin_token_sees_every_tenants_sandboxes_and_changes_none(server: ServerProcess, page: Any) -> None:
    async with Client(server.url + "/mcp", auth=ALICE) as alice:
        container_id = structured(await alice.call_tool("create_container", {}))["container_id"]
        try:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=server.url + "/console/api/", timeout=30) as http:
                listed = (await http.get("sandboxes", headers=admin)).json()
                assert listed["admin"] is True
                row = next(s for s in listed["sandboxes"] if s["container_id"] == container_id)
                assert row["tenant"].startswith("t-")
                for refused in (http.delete(f"sandboxes/{container_id}", headers=admin),
                                http.post(f"sandboxes/{container_id}/tickets", params={"for": "terminal"},
                                          headers=admin),
                                http.get(f"sandboxes/{container_id}/files", params={"path": "/root"}, headers=admin)):
                    assert (await refused).status_code == 403
                ticket = (await http.post(f"sandboxes/{container_id}/tickets", params={"for": "commands"},
                                          headers=admin)).json()["ticket"]
                # CPU and memory from the sandbox's cgroup: a busy loop shows, on the second reading.
                await alice.call_tool("execute_command", {"container_id": container_id,
                                                          "command": "timeout 3 sh -c 'while :; do :; done' &"})
                await http.get("sandboxes", headers={"Authorization": f"Bearer {ALICE}"})  # the first reading
                await anyio.sleep(1)
                used = next(s for s in (await http.get("sandboxes", headers={"Authorization": f"Bearer {ALICE}"})
                                        ).json()["sandboxes"] if s["container_id"] == container_id)
                assert used["memory_bytes"] > 0 and used["cpu_percent"] > 5, used  # an idle sandbox shows 0
                # A tenant never sees the admin view, nor another tenant's sandbox.
                as_bob = (await http.get("sandboxes", headers={"Authorization": f"Bearer {BOB}"})).json()
                assert as_bob["admin"] is False and container_id not in [s["container_id"] for s in as_bob["sandboxes"]]
            await alice.call_tool("execute_command", {"container_id": container_id, "command": "echo seen-by-admin"})
            feed = f"ws://127.0.0.1:{server.port}/console/api/commands?ticket={ticket}"
            async with ws_connect(feed, origin=server.url) as commands:  # type: ignore[arg-type]
                while "seen-by-admin" not in (event := json.loads(await commands.recv()))["stdout"]:
                    pass
                assert event["status"] == "completed"
            await page.goto(server.url + "/console/")
            await page.fill("#token", ADMIN)
            await page.click("#sign-in-form button")
            await page.wait_for_selector(f'tr[data-id="{container_id}"] td.tenant')
            await page.click(f'tr[data-id="{container_id}"]')
            assert await page.is_hidden("#destroy") and await page.is_hidden("#open-terminal")
            await page.locator("[data-command]", has_text="seen-by-admin").wait_for(timeout=10000)
            await page.screenshot(path=str(ARTIFACTS / "console-admin.png"), full_page=True)
        finally:
            await alice.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


async def test_a_lifetime_extended_from_the_console_outlives_a_restart_and_the_sandbox_cannot_forge_one(
        start_server: Any, page: Any) -> None:
    """A pooled sandbox's claim lies inside it, where its own root can rewrite it; the lifetime a
    restarted server believes is the one recorded on the host at hand-out and at each extension."""
    namespace = f"{RUN_ID}-console-lifetime"
    env = {"SANDBOX_NAMESPACE": namespace, "AUTH_TOKENS": ALICE, "SANDBOX_POOL_SIZE": "1",
           "SANDBOX_TTL_SECONDS": "3600"}
    server = start_server(env)
    health = lambda: httpx.get(server.url + "/health", timeout=10).json()  # noqa: E731
    deadline = anyio.current_time() + 60
    while health()["pool"]["ready"] < 1 and anyio.current_time() < deadline:
        await anyio.sleep(0.2)
    async with Client(server.url + "/mcp", auth=ALICE) as agent:
        made = structured(await agent.call_tool("create_container", {"ttl_seconds": 60}))
        container_id = made["container_id"]
        assert structured(await agent.call_tool("check_container", {"container_id": container_id})
                          )["seconds_remaining"] <= 60
        pooled = subprocess.run(["podman", "inspect", "--format", '{{index .Config.Labels "mcp-sandbox.pooled"}}',
                                 f"mcp-sandbox-{container_id}"], capture_output=True, text=True).stdout.strip()
        assert pooled == "true"  # handed out from the pool: its claim is inside it
        forged = structured(await agent.call_tool("execute_command", {
            "container_id": container_id, "command": "echo '1 9999999999 local' > /var/lib/mcp-sandbox/claim"}))
        assert forged["exit_code"] == 0, forged
    await signed_in(page, server, ALICE)
    await page.click(f'tr[data-id="{container_id}"]')
    await page.click("#extend")
    await page.locator("#detail-note", has_text="now lives until").wait_for(timeout=10000)
    await page.screenshot(path=str(ARTIFACTS / "console-extended.png"), full_page=True)
    async with Client(server.url + "/mcp", auth=ALICE) as agent:
        extended = structured(await agent.call_tool("check_container", {"container_id": container_id}))
        assert 1800 < extended["seconds_remaining"] <= 1860, extended
    async with httpx.AsyncClient(base_url=server.url + "/console/api/", timeout=30,
                                 headers={"Authorization": f"Bearer {ALICE}"}) as http:
        capped = (await http.post(f"sandboxes/{container_id}/lifetime", json={"seconds": 100000})).json()
        assert 3590 <= capped["seconds_remaining"] <= 3600 and capped["most_seconds_remaining"] == 3600, capped
        for wrong in ({"seconds": 0}, {"seconds": True}, {"seconds": "60"}, {}):
            refused = await http.post(f"sandboxes/{container_id}/lifetime", json=wrong)
            assert refused.status_code == 400 and "seconds" in refused.json()["error"]
        assert (await http.post(f"sandboxes/{'0' * 32}/lifetime", json={"seconds": 60})).status_code == 404

    server.stop()
    server.start()
    async with Client(server.url + "/mcp", auth=ALICE) as agent:
        after = structured(await agent.call_tool("check_container", {"container_id": container_id}))
        assert after["expires_at"] == capped["expires_at"], (after, capped)
        await agent.call_tool("destroy_container", {"container_id": container_id})
