"""Commands in a sandbox's Pod over the pods/exec WebSocket (sandbox/backend/kubernetes/exec_stream.py),
against a STAND-IN for the kubelet's exec streaming (tests/support/kubelet_exec.py: no kubelet or API
server runs here) that relays into a real Pod run by podman kube play: stdout, stderr and the exit
code, stdin and its end (v5), v4's limits, output split at odd places, a cut connection, a refusal."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from conftest import RUN_ID
from support.kube import kube_played, printed_pod
from support.kubelet_exec import KubeletExec

from mcp_container_sandbox.sandbox.backend.kubernetes.exec_stream import ExecFailed, ExecStream, exec_path

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kube_played(printed_pod(f"{RUN_ID}-kube-exec"), tmp_path_factory.mktemp("pod")) as name:
        yield name


async def read_all(stream: ExecStream) -> bytes:
    out = b""
    with anyio.fail_after(60):
        while True:
            try:
                out += await stream.receive()
            except anyio.EndOfStream:
                return out


async def session(base: str, pod: str, argv: list[str]) -> ExecStream:
    return await ExecStream.open(base + exec_path("sandboxes", pod, "sandbox", argv))


async def test_stdout_stderr_and_the_exit_code_come_back(pod: str) -> None:
    kubelet = KubeletExec({pod})
    async with kubelet.serving() as base:
        stream = await session(base, pod, ["sh", "-c", "seq 1 20000; echo oops >&2; exit 3"])
        out = await read_all(stream)
    assert out == "".join(f"{n}\n" for n in range(1, 20001)).encode()  # whole, though sent in pieces of 1-700 bytes
    assert bytes(stream.stderr) == b"oops\n" and stream.exit_code == 3
    assert stream.protocol == "v5.channel.k8s.io" and kubelet.sessions[0]["protocol"] == "v5.channel.k8s.io"


async def test_stdin_reaches_the_process_and_its_end_ends_it_under_v5(pod: str) -> None:
    async with KubeletExec({pod}).serving() as base:
        stream = await session(base, pod, ["cat"])
        await stream.send(b"hello ")
        await stream.send(b"sandbox\n")
        await stream.send_eof()
        with anyio.fail_after(30):
            assert await read_all(stream) == b"hello sandbox\n"
    assert stream.exit_code == 0


async def test_under_v4_the_status_is_read_and_closing_stdin_alone_is_refused(pod: str) -> None:
    async with KubeletExec({pod}, protocols=("v4.channel.k8s.io",)).serving() as base:
        stream = await session(base, pod, ["sh", "-c", "echo v4; exit 1"])
        with pytest.raises(ExecFailed, match="v5.channel.k8s.io"):
            await stream.send_eof()
        assert await read_all(stream) == b"v4\n" and stream.exit_code == 1


async def test_a_connection_cut_before_the_status_is_no_exit_code(pod: str) -> None:
    async with KubeletExec({pod}, abrupt_after=1000).serving() as base:
        stream = await session(base, pod, ["sh", "-c", "seq 1 100000"])
        out = await read_all(stream)
    assert 1000 <= len(out) < len("".join(f"{n}\n" for n in range(1, 100001)))
    assert stream.exit_code is None and stream.status is not None and stream.status["reason"] == "StreamClosed"


async def test_a_refused_session_says_what_the_api_answered(pod: str) -> None:
    async with KubeletExec({pod}).serving() as base:
        with pytest.raises(ExecFailed, match="refused the exec session.*mcp-sandbox-gone.*not found"):
            await session(base, "mcp-sandbox-gone", ["true"])
    with pytest.raises(ExecFailed, match="could not reach"):
        await ExecStream.open("ws://127.0.0.1:9" + exec_path("sandboxes", pod, "sandbox", ["true"]))


async def test_the_sandbox_agents_protocol_runs_over_the_exec_stream(pod: str) -> None:
    """The command channel a sandbox's commands go through, over pods/exec instead of podman exec: the
    helpers installed through one session's stdin (ended by v5's close), then the agent in another.
    (Closed, the agent still follows a finished command's output for 30 s, for what it left running:
    this test's session, and so the test, lasts that long.)"""
    from mcp_container_sandbox.sandbox.paths import AGENT_PATH
    from mcp_container_sandbox.sandbox.runtime.channel import AgentChannel, find_agent_binary
    from mcp_container_sandbox.sandbox.runtime.command_records import parse_report
    from mcp_container_sandbox.sandbox.runtime.helpers import INSTALL_HELPERS, helpers_files, helpers_tar

    agent = find_agent_binary()
    assert agent is not None, "the sandbox agent is built by scripts/setup.sh"
    async with KubeletExec({pod}).serving() as base:
        install = await session(base, pod, ["/bin/sh", "-c", INSTALL_HELPERS])
        await install.send(helpers_tar(helpers_files(agent)))
        await install.send_eof()
        assert await install.wait() == 0, bytes(install.stderr)
        argv = [AGENT_PATH, str(1 << 20)]
        channel = AgentChannel(argv, open_stream=lambda: session(base, pod, argv))
        async with anyio.create_task_group() as group:
            await channel.open(group.start_soon)
            try:
                command_id = "cmd_" + "0123456789abcdef"
                exited = channel.expect_exit(command_id)
                started = int(time.time() * 1000)
                assert await channel.run(command_id, 30, started, 65536, b"echo over-exec; echo err >&2; exit 4") > 0
                await exited.wait(30)
                state = parse_report(command_id, await channel.report(command_id, 65536))
                assert state is not None
                assert (state.stdout, state.stderr, state.exit_code) == ("over-exec\n", "err\n", 4)
                await channel.put("/tmp/from-the-server", b"put over exec\n")
                assert (await channel.read_file("/tmp/from-the-server", 0, 100)).endswith(b"put over exec\n")
            finally:
                await channel.close()
                group.cancel_scope.cancel()
