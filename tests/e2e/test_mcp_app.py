"""The MCP App of create_container and execute_command, in a real browser under the host side of
@modelcontextprotocol/ext-apps (npm): a test host page (Debian's Chromium, Playwright) loads the app
resource the server lists, hands it a tool's input and result through the official AppBridge, and
answers the app's tools/call through a real MCP client to the server. The app shows the command's
output and follows it, live, to its end, and opens a terminal of its own in the sandbox."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ServerProcess, structured
from fastmcp import Client
from fastmcp.apps.config import UI_EXTENSION_ID
from mcp.client.extension import advertise
from support.browser import launch_chromium
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.anyio

E2E = Path(__file__).resolve().parent
HOST = """async ({ html, input, result }) => {
  const { AppBridge, PostMessageTransport } = window.McpAppsHost;
  const iframe = document.createElement('iframe');
  iframe.sandbox = 'allow-scripts';
  iframe.style = 'width: 900px; height: 500px';
  document.body.appendChild(iframe);
  const bridge = new AppBridge(null, { name: 'test-host', version: '1.0.0' }, { serverTools: {} });
  bridge.oncalltool = async (params) => window.callServerTool(params);
  window.appInitialized = new Promise((resolve) => { bridge.oninitialized = resolve; });
  const transport = new PostMessageTransport(iframe.contentWindow, iframe.contentWindow);
  const connected = bridge.connect(transport);
  iframe.srcdoc = html;
  await connected;
  await window.appInitialized;
  await bridge.sendToolInput({ arguments: input });
  await bridge.sendToolResult(result);
}"""


@pytest.fixture(scope="module")
def host_bundle() -> Path:
    """The AppBridge for the browser, bundled from node_modules by esbuild (npm)."""
    bundle = ROOT / ".pytest_cache" / "apps-host.js"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(E2E / "node_modules" / ".bin" / "esbuild"), str(E2E / "apps_host.mjs"), "--bundle",
                    "--format=iife", f"--outfile={bundle}", "--log-level=warning"], check=True, cwd=E2E, timeout=120)
    return bundle


@asynccontextmanager
async def app_in_host(host_bundle: Path, call_server_tool: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                      html: str, tool_input: dict[str, Any], result: dict[str, Any]) -> AsyncIterator[Any]:
    """A test host page in Chromium showing the app (``html``) with a tool's input and result; the app's
    tools/call are answered by ``call_server_tool``."""
    async with playwright_api.async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            page = await browser.new_page()
            await page.expose_function("callServerTool", call_server_tool)
            await page.set_content("<!DOCTYPE html><html><body></body></html>")
            await page.add_script_tag(path=str(host_bundle))
            await page.evaluate(HOST, {"html": html, "input": tool_input, "result": result})
            yield page
        finally:
            await browser.close()


def as_wire(result: Any) -> dict[str, Any]:
    """A FastMCP client's CallToolResult as the JSON a host hands an app."""
    return {"content": [block.model_dump(mode="json", exclude_none=True) for block in result.content],
            "structuredContent": result.structured_content, "isError": result.is_error}


async def test_the_command_app_shows_and_follows_a_command_under_the_official_host(
        http_server: ServerProcess, host_bundle: Path) -> None:
    async with Client(http_server.url + "/mcp") as client:
        tools = {tool.name: tool for tool in await client.list_tools()}
        uri = tools["execute_command"].meta["ui"]["resourceUri"]
        assert tools["create_container"].meta["ui"]["resourceUri"] == uri
        resource = (await client.read_resource(uri))[0]
        assert resource.mime_type == "text/html;profile=mcp-app"
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        try:
            arguments = {"container_id": container_id,
                         "command": "for i in 1 2 3 4 5 6; do echo line-$i; sleep 1; done; echo done >&2"}
            first = await client.call_tool("execute_command", arguments)
            assert structured(first)["status"] == "running"  # after SANDBOX_SYNC_WAIT_SECONDS: the app follows it
            follow_calls: list[dict[str, Any]] = []

            async def call_server_tool(params: dict[str, Any]) -> dict[str, Any]:
                follow_calls.append(params)
                return as_wire(await client.call_tool(params["name"], params.get("arguments") or {}))

            async with app_in_host(host_bundle, call_server_tool, resource.text, arguments, as_wire(first)) as page:
                app = page.frame_locator("iframe")
                await app.locator("#stdout").filter(has_text="line-1").wait_for(timeout=10000)
                await app.locator("#status").filter(has_text="completed").wait_for(timeout=20000)
                shown = await app.locator("#stdout").text_content()
                assert shown == "".join(f"line-{i}\n" for i in range(1, 7)), shown
                assert await app.locator("#stderr").text_content() == "done\n"
                assert "exit code 0" in await app.locator("#status").text_content()
                await page.screenshot(path=str(ROOT / ".pytest_cache" / "artifacts" / "mcp-app.png"))
            assert follow_calls and all(call["name"] == "check_container" for call in follow_calls)
        finally:
            await client.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


async def test_hosts_without_apps_get_the_results_they_always_got(http_server: ServerProcess) -> None:
    async with Client(http_server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        try:
            result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})
            assert structured(result)["stdout"] == "hi\n" and structured(result)["exit_code"] == 0
            assert "ui" not in (result.meta or {})  # the app is declared on the tool, not forced into results
        finally:
            await client.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


SCREEN = """() => { const b = window.terminalForTests.term.buffer.active; const lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); return lines.join('\\n'); }"""


async def test_the_app_opens_a_terminal_of_its_own_and_only_hosts_with_apps_are_offered_its_tool(
        http_server: ServerProcess, host_bundle: Path) -> None:
    with_apps = [advertise(UI_EXTENSION_ID, {"mimeTypes": ["text/html;profile=mcp-app"]})]
    async with Client(http_server.url + "/mcp", extensions=with_apps) as host, \
            Client(http_server.url + "/mcp") as plain:
        offered = {tool.name: tool for tool in await host.list_tools()}
        assert offered["open_terminal"].meta["ui"]["visibility"] == ["app"]
        assert "open_terminal" not in [tool.name for tool in await plain.list_tools()]
        app_resource = next(r for r in await host.list_resources() if str(r.uri).startswith("ui://"))
        csp = app_resource.meta["ui"]["csp"]
        socket_origin = "ws" + http_server.url[len("http"):]
        assert socket_origin in csp["connectDomains"] and http_server.url in csp["resourceDomains"]
        html = (await host.read_resource(str(app_resource.uri)))[0].text
        created = await host.call_tool("create_container", {})
        container_id = structured(created)["container_id"]
        try:
            calls: list[str] = []

            async def call_server_tool(params: dict[str, Any]) -> dict[str, Any]:
                calls.append(params["name"])
                return as_wire(await host.call_tool(params["name"], params.get("arguments") or {}))

            async with app_in_host(host_bundle, call_server_tool, html, {}, as_wire(created)) as page:
                app = page.frame_locator("iframe")
                await app.locator("#open-terminal").click()
                frame = page.frames[1]
                await frame.wait_for_function(
                    "() => window.terminalForTests && window.terminalForTests.socket.readyState === 1")
                await app.locator("#terminal").click()
                await page.keyboard.type("echo h''i")  # the typed line differs from what it prints
                await page.keyboard.press("Enter")
                await frame.wait_for_function(f"() => ({SCREEN})().includes('\\nhi')", timeout=10000)
                await page.screenshot(path=str(ROOT / ".pytest_cache" / "artifacts" / "mcp-app-terminal.png"))
            assert calls == ["open_terminal"]
            # Its URL is good once, from any origin (the app runs in the host's frame): spent, it is no app's
            # ticket any more, and the console's own rule refuses the upgrade from another origin.
            url = structured(await host.call_tool("open_terminal", {"container_id": container_id}))["url"]
            async with ws_connect(url, origin="null") as terminal:  # type: ignore[arg-type]
                await terminal.send(b"echo once\n")
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(url, origin="null"):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
            unknown = await host.call_tool("open_terminal", {"container_id": "0" * 32}, raise_on_error=False)
            assert unknown.is_error and "0" * 32 in unknown.content[0].text
        finally:
            await host.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)
