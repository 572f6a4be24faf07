"""The web console's three figures (docs/console.md), on the bench's server (no tokens: the console's
local tenant):

- its list (GET /console/api/sandboxes) with ``live`` sandboxes alive, against the same with one;
- a line a command prints, until an open console shows it: the bench writes a line into ``cat``
  (execute_command keep_stdin_open, then write_stdin) and the console page in Debian's Chromium
  (Playwright) notes when that line appears on the page (Date.now(), on this same clock); timed from
  just before the write, so the write's own call is counted too;
- a keystroke in the console's terminal until its echo comes back, over the terminal's WebSocket;
- a sandbox an MCP client creates, from create_container's answer until an open console lists it."""

from __future__ import annotations

import statistics
import time

import anyio
import httpx
from fastmcp import Client
from harness import Bench, four_at_a_time, structured
from support.browser import launch_chromium
from websockets.asyncio.client import connect as ws_connect

# Notes, on the page, when each line "M<n>" first shows in the command's block.
WATCH = """(commandId) => { window.arrivals = {};
  const seen = () => { const block = document.querySelector(`[data-command="${commandId}"] .stdout`);
    if (!block) return; for (const m of block.textContent.matchAll(/M(\\d+)/g))
      if (!(m[1] in window.arrivals)) window.arrivals[m[1]] = Date.now(); };
  new MutationObserver(seen).observe(document.body, { subtree: true, childList: true, characterData: true }); seen(); }"""


# Notes, on the page, when each sandbox's row first shows in the list.
ROWS = """() => { window.rowsSeen = {}; const seen = () => { for (const row of document.querySelectorAll('#rows tr'))
    if (!(row.dataset.id in window.rowsSeen)) window.rowsSeen[row.dataset.id] = Date.now(); };
  new MutationObserver(seen).observe(document.body, { subtree: true, childList: true }); seen(); }"""


async def listed_latency(url: str, client: Client, count: int) -> list[float]:
    from playwright.async_api import async_playwright

    times, made = [], []
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            page = await browser.new_page()
            await page.goto(url + "/console/")
            await page.wait_for_selector("#console", state="visible")
            await page.evaluate(ROWS)
            for _ in range(count):
                container_id = structured(await client.call_tool("create_container", {}))["container_id"]
                answered = time.time() * 1000
                made.append(container_id)
                shown = await page.wait_for_function(f"() => window.rowsSeen[{container_id!r}]", timeout=30000)
                times.append(await shown.json_value() - answered)
        finally:
            await browser.close()
    await four_at_a_time(len(made), lambda n: client.call_tool("destroy_container", {"container_id": made[n]}))
    return times


async def list_times(url: str, count: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=30) as http:
        await http.get(url + "/console/api/sandboxes")
        for _ in range(count):
            started = time.perf_counter()
            response = await http.get(url + "/console/api/sandboxes")
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    return times


async def keystrokes(url: str, container_id: str, count: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as http:
        ticket = (await http.post(f"{url}/console/api/sandboxes/{container_id}/tickets")).json()["ticket"]
    times = []
    async with ws_connect(f"{url.replace('http', 'ws')}/console/api/terminal?ticket={ticket}", origin=url) as term:  # type: ignore[arg-type]
        await term.send(b"echo ready\n")
        seen = b""
        while b"ready\r\n" not in seen.replace(b"echo ready", b""):
            seen += await term.recv()  # type: ignore[operator]
        await anyio.sleep(0.3)
        for n in range(count):
            key = b"abcdefghij"[n % 10:n % 10 + 1]
            started = time.perf_counter()
            await term.send(key)
            echoed = b""
            while key not in echoed:
                echoed += await term.recv()  # type: ignore[operator]
            times.append((time.perf_counter() - started) * 1000)
            if n % 10 == 9:
                await term.send(b"\x15")  # Ctrl-U: clear the line
                await anyio.sleep(0.05)
    return times


async def line_latency(url: str, client: Client, container_id: str, count: int) -> list[float]:
    from playwright.async_api import async_playwright

    started = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": "cat", "keep_stdin_open": True, "timeout_seconds": 600}))
    command_id = started["command_id"]
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            page = await browser.new_page()
            await page.goto(url + "/console/")
            await page.click(f'tr[data-id="{container_id}"]')
            await page.evaluate(WATCH, command_id)
            written = {}
            for n in range(count):
                written[n] = time.time() * 1000
                await client.call_tool("write_stdin", {"container_id": container_id, "command_id": command_id,
                                                       "data": f"M{n}\n"})
                await anyio.sleep(0.2)
            await page.wait_for_function(f"() => Object.keys(window.arrivals).length >= {count}", timeout=30000)
            arrivals = await page.evaluate("() => window.arrivals")
        finally:
            await browser.close()
    await client.call_tool("send_signal", {"container_id": container_id, "command_id": command_id, "signal": "KILL"})
    return [arrivals[str(n)] - written[n] for n in range(count)]


async def console(bench: Bench, client: Client, live: int, count: int = 200) -> None:
    first = structured(await client.call_tool("create_container", {}))["container_id"]
    with_one = await list_times(bench.url, count)
    ids = [first]

    async def create_one(_: int) -> None:
        ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

    await four_at_a_time(live - 1, create_one)
    await bench.pool_settled(bench.url)  # the pool's refill after the creates is not the list's cost
    with_many = await list_times(bench.url, count)
    bench.row(f"console list with {live} live / with 1", with_many, with_one)
    lines = await line_latency(bench.url, client, first, 50)
    bench.row("console: a printed line shown", lines, None, note="write_stdin to cat, until on the page")
    keys = await keystrokes(bench.url, first, count)
    bench.row("console terminal: keystroke to echo", keys, None, note=f"p50 {statistics.median(keys):.1f} ms")
    await four_at_a_time(len(ids), lambda n: client.call_tool("destroy_container", {"container_id": ids[n]}))
    listed = await listed_latency(bench.url, client, 20)
    bench.row("console: a new sandbox listed", listed, None, note="create_container's answer until on the page")
