"""Arguments generated from each tool's published ``inputSchema`` (hypothesis-jsonschema), valid
ones and ones mutated from them (wrong types, missing and extra fields, hostile strings, numbers
and lists), sent to ``python server.py`` over Streamable HTTP by FastMCP's client.

Every answer must be a result, or a tool error whose message names the bad field when the
arguments break the schema; never a protocol error, a 500 or an internal error in the server's
log; never later than the tool's documented time; and nothing the calls made is left behind.

CI runs a fixed seed and a few examples per tool; ``GENERATED_EXAMPLES=500 scripts/test.sh
tests/integration/test_generated_inputs.py`` runs many more (``GENERATED_SEED`` picks another
sequence)."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from conftest import RUN_ID, ServerProcess, free_port, sandboxes_left
from fastmcp import Client
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from mcp_container_sandbox.tools import tool_names

EXAMPLES = int(os.environ.get("GENERATED_EXAMPLES", "15"))
SEED = int(os.environ.get("GENERATED_SEED", "20261207"))
SYNC_WAIT = 3.0  # SANDBOX_SYNC_WAIT_SECONDS in the tests (conftest.py)
NAMESPACE = f"{RUN_ID}-generated"

# Values a model (or an attacker) may send where something else belongs.
HOSTILE = [
    True, False, None, 0, -1, -0.0, 1.5, 2**63, -(2**63), 1e308, 1e-308,
    "", " ", "\t\n", "\x00", "a\x00b", "\x1b[2J\x07", "é" * 1000,
    "x" * 100_000, "../" * 50 + "etc/passwd", "/" + "a/" * 2000, "relative/path", "/proc/self/environ",
    "$(reboot)", "`id`", "; rm -rf /", "%00", "\u202e", "null", "true", "600",
    [], [""] * 1000, [None], {}, {"a": {"b": {"c": [1, 2, {"d": None}]}}},
]


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the server enforces it: arguments a tool does not have are refused."""
    out = copy.deepcopy(schema)
    out["additionalProperties"] = False
    return out


@dataclass
class Session:
    """A server process, a client on it (driven from the test's thread through a portal) and what
    the calls made: sandboxes, snapshots, volumes."""

    server: ServerProcess
    portal: BlockingPortal
    client: Client
    schemas: dict[str, dict[str, Any]]
    live: str = ""
    finished_command: str = ""
    made: dict[str, set[str]] = field(default_factory=lambda: {"sandboxes": set(), "snapshots": set(),
                                                               "volumes": set()})
    calls: int = 0

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None, float]:
        async def run() -> Any:
            return await self.client.call_tool(name, arguments, raise_on_error=False)

        started = time.monotonic()
        result = self.portal.call(run)
        elapsed = time.monotonic() - started
        self.calls += 1
        text = " ".join(getattr(block, "text", "") for block in result.content)
        return result.is_error, text, result.structured_content, elapsed

    def fresh_sandbox(self) -> None:
        is_error, text, content, _ = self.call("create_container", {"ttl_seconds": 1800})
        assert not is_error, text
        assert content is not None
        self.live = content["container_id"]
        is_error, text, content, _ = self.call("execute_command", {"container_id": self.live, "command": "echo hi"})
        assert not is_error and content is not None, text
        self.finished_command = content["command_id"]

    def note(self, name: str, arguments: dict[str, Any], content: dict[str, Any] | None) -> None:
        """Remember what a successful call made, so the test can remove it and check it is gone."""
        content = content or {}
        if name == "create_container" and "container_id" in content:
            self.made["sandboxes"].add(content["container_id"])
        elif name == "snapshot_container" and "snapshot_id" in content:
            self.made["snapshots"].add(content["snapshot_id"])
        elif name == "create_volume":
            self.made["volumes"].add(arguments["name"])
        elif name == "destroy_container" and arguments.get("container_id") == self.live:
            self.fresh_sandbox()


def documented_seconds(name: str, arguments: dict[str, Any]) -> float:
    """How long the docs let each tool take (docs/tools.md), with room for a loaded machine."""
    if name == "check_container":
        wait = arguments.get("wait_seconds")
        return (float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) else 0) + 15
    if name in ("execute_command", "write_stdin", "send_signal"):
        return SYNC_WAIT + 15
    return 30


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    env = {"SANDBOX_NAMESPACE": NAMESPACE, "SANDBOX_POOL_SIZE": "0", "SANDBOX_PROXY_PORT": str(free_port()),
           "SANDBOX_MAX_CONTAINERS": "50"}
    server = ServerProcess(env).start()
    try:
        with start_blocking_portal() as portal:
            client = portal.wrap_async_context_manager(Client(server.url + "/mcp", timeout=120))
            with client as connected:
                schemas = {tool.name: tool.input_schema for tool in portal.call(connected.list_tools)}
                made = Session(server, portal, connected, schemas)
                made.fresh_sandbox()
                try:
                    yield made
                finally:
                    made.made["sandboxes"].add(made.live)
                    remove_everything(made)
    finally:
        server.stop()
    log = server.log_text()
    for sign in ("Traceback", "Internal error", " 500 "):
        assert sign not in log, log[log.find(sign) - 2000: log.find(sign) + 2000]


def remove_everything(made: Session) -> None:
    for container_id in made.made["sandboxes"]:
        made.call("destroy_container", {"container_id": container_id})
    for snapshot_id in made.made["snapshots"]:
        made.call("delete_snapshot", {"snapshot_id": snapshot_id})
    for name in made.made["volumes"]:
        made.call("delete_volume", {"name": name})
    _, _, snapshots, _ = made.call("list_snapshots", {})
    _, _, volumes, _ = made.call("list_volumes", {})
    assert snapshots is not None and snapshots["snapshots"] == [], snapshots
    assert volumes is not None and volumes["volumes"] == [], volumes
    assert sandboxes_left(NAMESPACE) == []


def valid_arguments(made: Session, name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments the schema allows, with the ids sometimes ones that exist (else every call would
    stop at "no sandbox ...")."""
    schema = made.schemas[name]

    def real_ids(arguments: dict[str, Any], draw_live: bool) -> dict[str, Any]:
        if draw_live and "container_id" in arguments:
            arguments["container_id"] = made.live
            if "command_id" in arguments:
                arguments["command_id"] = made.finished_command
        return arguments

    return st.builds(real_ids, from_schema(closed(schema)), st.booleans())


@st.composite
def mutated_arguments(draw: st.DrawFn, made: Session, name: str) -> tuple[dict[str, Any], str]:
    """Valid arguments with one thing wrong, and the field it concerns."""
    arguments = draw(valid_arguments(made, name))
    properties = list(made.schemas[name].get("properties", {}))
    kind = draw(st.sampled_from(["replace", "drop", "extra"] if properties else ["extra"]))
    if kind == "extra":
        extra = draw(st.sampled_from(["timeout", "containerId", "__proto__", "ctx", "self", "x" * 300]))
        arguments[extra] = draw(st.sampled_from(HOSTILE))
        return arguments, extra
    target = draw(st.sampled_from(properties))
    if kind == "drop":
        arguments.pop(target, None)
    else:
        arguments[target] = draw(st.sampled_from(HOSTILE))
    return arguments, target


def breaks_schema(schema: dict[str, Any], arguments: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(arguments, closed(schema))
    except jsonschema.ValidationError:
        return True
    return False


def check_answer(made: Session, name: str, arguments: dict[str, Any], field_name: str | None) -> None:
    try:
        is_error, text, content, elapsed = made.call(name, arguments)
    except Exception as exc:  # a protocol error, a broken session: never acceptable
        raise AssertionError(f"{name}({json.dumps(arguments)[:500]}) raised {exc!r}") from exc
    assert elapsed <= documented_seconds(name, arguments), (name, arguments, elapsed)
    assert text.strip(), (name, arguments)
    assert "Internal error" not in text and "Traceback" not in text, text
    if field_name is not None and breaks_schema(made.schemas[name], arguments):
        assert is_error, f"{name} took arguments its schema refuses: {json.dumps(arguments)[:500]} -> {text[:300]}"
        assert field_name in text, f"{name}: the error does not name {field_name!r}: {text[:500]}"
    if not is_error:
        made.note(name, arguments, content)


@pytest.mark.parametrize("name", tool_names())
def test_generated_arguments_get_a_result_or_a_clear_error(session: Session, name: str) -> None:
    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(valid_arguments(session, name).map(lambda arguments: (arguments, None)),
                     mutated_arguments(session, name)))
    def check(case: tuple[dict[str, Any], str | None]) -> None:
        check_answer(session, name, *case)

    check()


def test_strings_no_json_encoder_writes_are_a_parse_error_and_the_server_goes_on(session: Session) -> None:
    """A lone surrogate (\\ud800) or bytes that are not UTF-8 inside a string cannot come from a JSON
    encoder (FastMCP's client refuses to send them); written by hand into a request of a session,
    they are a JSON-RPC parse error, and the session and the server go on."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    url = session.server.url + "/mcp"
    opened = httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "by-hand", "version": "1"}}})
    headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"read_file","arguments":%s}}'
    for number, arguments in enumerate([b'{"container_id":"\\ud800","path":"/a"}',
                                        b'{"container_id":"\xff\xfe","path":"/a"}',
                                        b'{"container_id":"x","path":"/tmp/\\udfff\\ud800"}'], start=1):
        refused = httpx.post(url, headers=headers, content=call % (number, arguments))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == -32700, refused.text
    answered = httpx.post(url, headers=headers, content=call % (9, b'{"container_id":"x","path":"/tmp/\\u0000"}'))
    assert answered.status_code == 200 and "No sandbox with container_id 'x'" in answered.text, answered.text
    is_error, text, _, _ = session.call("list_containers", {})
    assert not is_error, text
