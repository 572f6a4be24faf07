"""Pure decisions, without Podman: what the host's Podman can enforce, what changed since a pooled
sandbox was made, the PATH of the server's subprocesses, how a command's end is read, and the
error for the server's own machinery failing, and what a failed start tells."""

from __future__ import annotations

import json

import pytest

from mcp_container_sandbox.sandbox.backend.podman_cli import system_env
from mcp_container_sandbox.sandbox.containers import _start_failure
from mcp_container_sandbox.sandbox.errors import PodmanError, machinery_failure
from mcp_container_sandbox.sandbox.limits import why_limits_fail
from mcp_container_sandbox.sandbox.model import Sandbox
from mcp_container_sandbox.sandbox.pool import changed_settings
from mcp_container_sandbox.sandbox.runtime.command_records import parse_report


def podman_info(rootless: bool, version: str, controllers: list[str]) -> dict:
    return {"host": {"security": {"rootless": rootless}, "cgroupVersion": version, "cgroupControllers": controllers}}


@pytest.mark.parametrize(
    ("info", "refused_for"),
    [
        (podman_info(False, "v1", ["cpu", "memory", "pids"]), None),
        (podman_info(False, "v2", ["cpu", "memory", "pids", "io"]), None),
        (podman_info(True, "v2", ["cpu", "memory", "pids"]), None),
        (podman_info(True, "v1", []), "cgroup v1"),
        (podman_info(True, "v2", ["memory", "pids"]), "cpu"),
        ({}, None),  # Podman said nothing: the first sandbox's cgroup decides
    ],
)
def test_limits_are_refused_only_where_podman_would_ignore_them(info: dict, refused_for: str | None) -> None:
    problem = why_limits_fail(info)
    if refused_for is None:
        assert problem == ""
    else:
        assert refused_for in problem and "rootful" in problem and "Delegate=yes" in problem


def test_changed_settings_names_what_changed_and_nothing_else() -> None:
    now = {"image_id": "abc", "network": "none", "runtime": ""}
    assert changed_settings(json.dumps(now), now) == ""
    changed = changed_settings(json.dumps({**now, "network": ""}), now)
    assert changed == "network: '' -> 'none'"
    assert "no record" in changed_settings("", now)
    assert "no record" in changed_settings("{not json", now)


def test_subprocesses_get_the_system_folders_after_the_callers_path() -> None:
    env = system_env({"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/home/u"})
    assert env["PATH"].split(":") == ["/opt/venv/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin",
                                      "/usr/sbin", "/sbin"]
    assert env["HOME"] == "/home/u"
    assert system_env({})["PATH"].startswith("/usr/local/sbin:")


def report(started: str, finished: str) -> bytes:
    return f"MCPSB2\n0\n0\n0\n{started}\n{finished}\n0\n0\n0\n0\n0 0 0 0 0 0\n".encode()


def test_a_commands_end_in_milliseconds_or_in_whole_seconds_from_older_records() -> None:
    assert parse_report("cmd_0123456789abcdef", report("1795937555295", "1795937557301")).duration_ms == 2006
    # Records written before milliseconds: the end in whole seconds.
    assert parse_report("cmd_0123456789abcdef", report("1795937555295", "1795937558")).duration_ms == 2705


def test_the_server_machinery_failing_says_so_and_what_to_do() -> None:
    message = str(machinery_failure("output-unwritable:/var/lib/mcp-sandbox/output:errno-13"))
    assert "/var/lib/mcp-sandbox/output" in message and "Permission denied" in message
    assert "did not run" in message and "destroy_container" in message
    record = str(machinery_failure("state-unwritable:/run/mcp-sandbox/commands:errno-28"))
    assert "record in /run/mcp-sandbox/commands" in record and "No space left on device" in record
    assert "too-many-commands" in str(machinery_failure("too-many-commands"))
    # A fork that fails at the sandbox's process limit is the sandbox being full, not the machinery.
    full = str(machinery_failure("fork-11"))
    assert "limit of 100 processes" in full and "machinery" not in full


@pytest.mark.parametrize(("stderr", "says"), [
    ('netavark: unable to add interface to bridge: Exchange full (os error 54)',
     ["bridge of the sandbox network 'mcp-sandbox' is full", "network=false", "SANDBOX_NETWORK_SANDBOXES"]),
    ("allocating lock for new container: allocation failed; exceeded num_locks (2048)",
     ["no lock left", "num_locks", "scripts/setup.sh"]),
    ("localhost/nothing: image not known", ["is not available on this host"]),
])
def test_a_failed_start_says_what_the_operator_or_client_can_do(stderr: str, says: list[str]) -> None:
    sandbox = Sandbox("0" * 32, "localhost/nothing", 0, 1, network="mcp-sandbox")
    failure = _start_failure(PodmanError(["podman", "run"], None, stderr), sandbox, "localhost/nothing")
    assert all(part in str(failure) for part in says), str(failure)
    assert stderr in str(failure)  # and what Podman said
