"""A model-checked sequence of tools: hypothesis' rule-based state machine drives ``python server.py``
over Streamable HTTP with the tools (create, fork, commands sync and async, stdin, signals, files,
file and preview links, snapshots, destroy, TTL expiry, a quota refusal, restarts of the server),
while a model says what must exist. After every step: the sandboxes in Podman and in
list_containers are exactly the model's, so are the snapshots, every file and preview link works
for live sandboxes and is 404 for the rest, and every command's result is the one it produced.

CI runs the same few sequences every time (derandomized); ``MODEL_EXAMPLES=50 MODEL_STEPS=60 scripts/test.sh
tests/integration/test_model_checked.py`` runs many more. A failure hypothesis shrinks is kept as a
regression test at the end of this file."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from conftest import RUN_ID, ServerProcess, free_port, sandbox_names
from fastmcp import Client
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support.preview_app import preview_app_binary, start_and_wait

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "2"))
STEPS = int(os.environ.get("MODEL_STEPS", "25"))
DERANDOMIZE = "MODEL_EXAMPLES" not in os.environ  # CI: the same sequences every run
# Shrinking a failure (a restart is a step) can take long: MODEL_SHRINK=0 reports the failing run as found.
PHASES = [phase for phase in Phase if phase is not Phase.shrink or os.environ.get("MODEL_SHRINK") != "0"]
NAMESPACE = f"{RUN_ID}-model"
MAX_LIVE = 3  # SANDBOX_MAX_PER_TENANT of the server under test
PATHS = ["/w/a.txt", "/w/b.txt", "/w/d/c.txt"]
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 _-", min_size=1, max_size=24)


@dataclass
class Box:
    """What the model knows of one live sandbox."""

    files: dict[str, str] = field(default_factory=dict)
    commands: dict[str, tuple[str, int]] = field(default_factory=dict)  # command_id -> (stdout, exit code)
    serving: bool = False


class Remote:
    """The server process and a client on it, driven from the test's thread; restartable."""

    def __init__(self) -> None:
        self.env = {"SANDBOX_NAMESPACE": NAMESPACE, "SANDBOX_POOL_SIZE": "0", "SANDBOX_PROXY_PORT": str(free_port()),
                    "SANDBOX_MAX_PER_TENANT": str(MAX_LIVE), "SANDBOX_SYNC_WAIT_SECONDS": "1",
                    "SANDBOX_REAP_INTERVAL_SECONDS": "1"}
        self.server = ServerProcess(self.env).start()
        self.portal_cm = start_blocking_portal()
        self.portal = self.portal_cm.__enter__()
        self._connect()

    def _connect(self) -> None:
        self.client_cm = self.portal.wrap_async_context_manager(Client(self.server.url + "/mcp", timeout=60))
        self.client = self.client_cm.__enter__()

    def call(self, tool: str, /, **arguments: Any) -> tuple[bool, str, dict[str, Any]]:
        async def run() -> Any:
            return await self.client.call_tool(tool, arguments, raise_on_error=False)

        result = self.portal.call(run)
        return result.is_error, " ".join(getattr(b, "text", "") for b in result.content), result.structured_content or {}

    def ok(self, tool: str, /, **arguments: Any) -> dict[str, Any]:
        is_error, text, content = self.call(tool, **arguments)
        assert not is_error, f"{tool}({arguments}): {text}"
        return content

    def restart(self) -> None:
        self.client_cm.__exit__(None, None, None)
        assert self.server.stop(signal.SIGTERM) == 0
        self.server = ServerProcess(self.env, port=self.server.port).start()
        self._connect()

    def close(self) -> None:
        self.client_cm.__exit__(None, None, None)
        self.portal_cm.__exit__(None, None, None)
        self.server.stop()


class Sandboxes(RuleBasedStateMachine):
    remote: Remote  # set by the test
    app: bytes

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, Box] = {}
        self.gone: set[str] = set()
        self.snapshots: dict[str, dict[str, str]] = {}
        self.file_links: dict[str, tuple[str, str]] = {}  # url -> (container_id, path)
        self.port_links: dict[str, str] = {}  # url -> container_id

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: len(self.live) < MAX_LIVE)
    @rule(network=st.sampled_from([None, False]))
    def create(self, network: bool | None) -> None:
        made = self.remote.ok("create_container", **({} if network is None else {"network": network}))
        self.live[made["container_id"]] = Box()

    @precondition(lambda self: len(self.live) == MAX_LIVE)
    @rule()
    def create_past_the_quota(self) -> None:
        is_error, text, _ = self.remote.call("create_container")
        assert is_error and "SANDBOX_MAX_PER_TENANT" in text, text

    @precondition(lambda self: self.snapshots and len(self.live) < MAX_LIVE)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        snapshot_id = data.draw(st.sampled_from(sorted(self.snapshots)))
        made = self.remote.ok("create_container", snapshot_id=snapshot_id)
        self.live[made["container_id"]] = Box(files=dict(self.snapshots[snapshot_id]))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        container_id = self.pick(data)
        assert self.remote.ok("destroy_container", container_id=container_id)["destroyed"] is True
        del self.live[container_id]
        self.gone.add(container_id)

    @precondition(lambda self: len(self.live) < MAX_LIVE)
    @rule()
    def let_one_expire(self) -> None:
        container_id = self.remote.ok("create_container", ttl_seconds=2)["container_id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            is_error, text, _ = self.remote.call("check_container", container_id=container_id)
            if is_error:
                assert "expired" in text or "lifetime" in text, text
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"{container_id} outlived its 2 s lifetime by 18 s")
        self.gone.add(container_id)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), word=WORDS, code=st.integers(0, 3))
    def run_a_command(self, data: st.DataObject, word: str, code: int) -> None:
        container_id = self.pick(data)
        ran = self.remote.ok("execute_command", container_id=container_id, command=f"echo '{word}'; exit {code}")
        assert (ran["stdout"], ran["exit_code"]) == (f"{word}\n", code), ran
        self.live[container_id].commands[ran["command_id"]] = (f"{word}\n", code)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), word=WORDS)
    def run_a_command_past_the_sync_wait(self, data: st.DataObject, word: str) -> None:
        container_id = self.pick(data)
        ran = self.remote.ok("execute_command", container_id=container_id, command=f"sleep 1.5; echo '{word}'")
        assert ran["status"] == "running", ran
        self.live[container_id].commands[ran["command_id"]] = (f"{word}\n", 0)

    @precondition(lambda self: any(box.commands for box in self.live.values()))
    @rule(data=st.data())
    def check_a_command(self, data: st.DataObject) -> None:
        container_id = data.draw(st.sampled_from(sorted(c for c, box in self.live.items() if box.commands)))
        command_id = data.draw(st.sampled_from(sorted(self.live[container_id].commands)))
        checked = self.remote.ok("check_container", container_id=container_id, command_id=command_id, wait_seconds=10)
        command = checked["command"]
        assert (command["stdout"], command["exit_code"]) == self.live[container_id].commands[command_id], command

    @precondition(lambda self: self.live)
    @rule(data=st.data(), text=WORDS)
    def type_into_a_command(self, data: st.DataObject, text: str) -> None:
        container_id = self.pick(data)
        started = self.remote.ok("execute_command", container_id=container_id, command="cat", keep_stdin_open=True)
        answered = self.remote.ok("write_stdin", container_id=container_id, command_id=started["command_id"],
                                  data=text + "\n", close=True)
        checked = self.remote.ok("check_container", container_id=container_id, command_id=started["command_id"],
                                 wait_seconds=10)["command"]
        assert answered["bytes_written"] == len(text) + 1 and checked["stdout"] == text + "\n", (answered, checked)
        self.live[container_id].commands[started["command_id"]] = (text + "\n", 0)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), name=st.sampled_from(["INT", "TERM", "KILL"]))
    def signal_a_command(self, data: st.DataObject, name: str) -> None:
        container_id = self.pick(data)
        started = self.remote.ok("execute_command", container_id=container_id, command="sleep 300")
        assert started["status"] == "running", started
        self.remote.ok("send_signal", container_id=container_id, command_id=started["command_id"], signal=name)
        checked = self.remote.ok("check_container", container_id=container_id, command_id=started["command_id"],
                                 wait_seconds=10)["command"]
        assert checked["status"] != "running" and checked["exit_code"] != 0, checked
        self.live[container_id].commands[started["command_id"]] = ("", checked["exit_code"])

    @precondition(lambda self: self.live)
    @rule(data=st.data(), path=st.sampled_from(PATHS), text=WORDS)
    def write_a_file(self, data: st.DataObject, path: str, text: str) -> None:
        container_id = self.pick(data)
        self.remote.ok("write_file", container_id=container_id, path=path, content=text)
        self.live[container_id].files[path] = text

    @precondition(lambda self: self.live)
    @rule(data=st.data(), path=st.sampled_from(PATHS))
    def read_a_file(self, data: st.DataObject, path: str) -> None:
        container_id = self.pick(data)
        is_error, text, content = self.remote.call("read_file", container_id=container_id, path=path)
        expected = self.live[container_id].files.get(path)
        if expected is None:
            assert is_error and f"{path!r} does not exist in sandbox {container_id}" in text, text
        else:
            assert not is_error and content["content"] == expected, (text, content)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def list_the_folder(self, data: st.DataObject) -> None:
        container_id = self.pick(data)
        files = self.live[container_id].files
        is_error, text, content = self.remote.call("list_files", container_id=container_id, path="/w", depth=2)
        if not files:
            assert is_error and f"'/w' does not exist in sandbox {container_id}" in text, text
            return
        assert not is_error, text
        listed = {entry["path"] for entry in content["entries"] if entry["type"] == "file"}
        assert listed == set(files), (listed, files)

    @precondition(lambda self: any(box.files for box in self.live.values()))
    @rule(data=st.data())
    def share_a_file(self, data: st.DataObject) -> None:
        container_id = data.draw(st.sampled_from(sorted(c for c, box in self.live.items() if box.files)))
        path = data.draw(st.sampled_from(sorted(self.live[container_id].files)))
        self.file_links[self.remote.ok("get_file_url", container_id=container_id, path=path)["url"]] = (container_id,
                                                                                                          path)

    @precondition(lambda self: any(not box.serving for box in self.live.values()))
    @rule(data=st.data())
    def serve_a_web_app(self, data: st.DataObject) -> None:
        container_id = data.draw(st.sampled_from(sorted(c for c, box in self.live.items() if not box.serving)))
        self.remote.ok("write_file", container_id=container_id, path="/root/preview-app",
                       content=base64.b64encode(self.app).decode(), encoding="base64", mode="755")
        started = self.remote.ok("execute_command", container_id=container_id, command=start_and_wait("8000"))
        assert started["stdout"] == "up\n", started
        url = self.remote.ok("expose_port", container_id=container_id, port=8000)["url"]
        self.live[container_id].serving = True
        self.port_links[url] = container_id

    @precondition(lambda self: self.live)
    @rule(data=st.data(), name=st.sampled_from([None, "kept"]))
    def snapshot(self, data: st.DataObject, name: str | None) -> None:
        container_id = self.pick(data)
        made = self.remote.ok("snapshot_container", container_id=container_id, **({"name": name} if name else {}))
        self.snapshots[made["snapshot_id"]] = dict(self.live[container_id].files)

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def delete_a_snapshot(self, data: st.DataObject) -> None:
        snapshot_id = data.draw(st.sampled_from(sorted(self.snapshots)))
        self.remote.ok("delete_snapshot", snapshot_id=snapshot_id)
        del self.snapshots[snapshot_id]

    @rule()
    def restart_the_server(self) -> None:
        self.remote.restart()

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.live)))

    # ------------------------------------------------------------------ what must hold after every step

    @invariant()
    def the_sandboxes_are_the_models(self) -> None:
        listed = {box["container_id"] for box in self.remote.ok("list_containers")["containers"]}
        assert listed == set(self.live), (listed, set(self.live))
        deadline = time.monotonic() + 30  # destroy answers at once and removes in the background
        while (in_podman := containers_of_podman()) != set(self.live) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_podman == set(self.live), (in_podman, set(self.live))

    @invariant()
    def the_snapshots_are_the_models(self) -> None:
        listed = {snap["snapshot_id"] for snap in self.remote.ok("list_snapshots")["snapshots"]}
        assert listed == set(self.snapshots), (listed, set(self.snapshots))

    @invariant()
    def links_work_for_live_sandboxes_only(self) -> None:
        for url, (container_id, path) in self.file_links.items():
            response = httpx.get(url)
            if container_id in self.live:
                assert response.status_code == 200 and response.text == self.live[container_id].files[path], url
            else:
                assert response.status_code == 404, (url, response.status_code)
        for url, container_id in self.port_links.items():
            response = httpx.get(url + "hello")
            if container_id in self.live:
                assert response.status_code == 200 and response.text.startswith("hello "), (url, response.text)
            else:
                assert response.status_code == 404, (url, response.status_code)

    def teardown(self) -> None:
        """Everything the server has, gone (a failed step may have made what the model never knew)."""
        for box in self.remote.ok("list_containers")["containers"]:
            self.remote.call("destroy_container", container_id=box["container_id"])
        for snap in self.remote.ok("list_snapshots")["snapshots"]:
            self.remote.call("delete_snapshot", snapshot_id=snap["snapshot_id"])
        deadline = time.monotonic() + 30
        while containers_of_podman() and time.monotonic() < deadline:
            time.sleep(0.2)


def containers_of_podman() -> set[str]:
    """The container_ids of this server's sandboxes that Podman has (named mcp-sandbox-<id>)."""
    return {name.removeprefix("mcp-sandbox-") for name in sandbox_names(NAMESPACE)}


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    made = Remote()
    try:
        yield made
    finally:
        made.close()


def test_the_tools_keep_to_the_model(remote: Remote) -> None:
    Sandboxes.remote, Sandboxes.app = remote, preview_app_binary()
    run_state_machine_as_test(Sandboxes, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None, derandomize=DERANDOMIZE, phases=PHASES,
        suppress_health_check=list(HealthCheck)))
    deadline = time.monotonic() + 30
    while containers_of_podman() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers_of_podman() == set()
