"""The peer, llm-sandbox, driven from the bench: bench/peer.py runs in a venv of its own
(.venv-peer, made on first use) and answers requests over its stdin and stdout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

ROOT = Path(__file__).resolve().parent.parent

PEER = "llm-sandbox[podman]==0.3.46"
PEER_ROWS = {"create", "life", "burst", "unpooled", "exec", "parallel"}  # the rows that measure the peer too
PEER_VENV = ROOT / ".venv-peer"


class PeerDriver:
    """The peer (bench/peer.py) in a venv of its own, on ``podman system service`` at a socket of
    the bench's own; one request at a time, answered in JSON."""

    def __init__(self, image: str, namespace: str) -> None:
        python = PEER_VENV / "bin" / "python"
        if not python.exists() or subprocess.run([str(python), "-c", "import llm_sandbox.podman"]).returncode != 0:
            print(f"installing the peer, {PEER}, into {PEER_VENV}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", PEER], check=True)
        self.version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('llm-sandbox'))"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        self.folder = Path(subprocess.run(["mktemp", "-d", "/tmp/mcp-sandbox-bench-peer-XXXXXX"], capture_output=True,
                                          text=True, check=True).stdout.strip())
        self.socket = self.folder / "podman.sock"
        self.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if self.socket.exists():
                break
            time.sleep(0.1)
        self.worker = subprocess.Popen([str(python), str(ROOT / "bench" / "peer.py"), str(self.socket), image, namespace],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask_now()  # {"ready": true}, once the library is imported

    def ask_now(self, **request: Any) -> dict[str, Any]:
        assert self.worker.stdin is not None and self.worker.stdout is not None
        if request:
            self.worker.stdin.write(json.dumps(request) + "\n")
            self.worker.stdin.flush()
        answer = json.loads(self.worker.stdout.readline() or '{"error": "the peer exited"}')
        if "error" in answer:
            raise RuntimeError(f"the peer ({PEER}) failed at {request}: {answer['error']}")
        return answer

    async def ask(self, **request: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.ask_now(**request))

    async def ms(self, **request: Any) -> float:
        """The peer's own time for one request (taken in the peer, around the library's call)."""
        return (await self.ask(**request))["ms"]

    def close(self) -> None:
        made: list[str] = []
        if self.worker.stdin is not None and self.worker.stdout is not None:
            self.worker.stdin.close()  # the worker closes the sessions it still has, then lists what it made
            made = json.loads(self.worker.stdout.readline() or '{"made": []}').get("made", [])
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.service.terminate()
        self.service.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
        # What the peer made and did not remove itself (the unpooled row's bare containers), before
        # their conmons go: a container whose conmon is killed stays "stopping" for good.
        if made:
            subprocess.run(["podman", "rm", "-f", "--ignore", "-t", "0", *made], capture_output=True)
        # Podman 4.3's REST API leaves a conmon pair behind for many exec sessions, alive after their
        # container is removed (~370 after one run, 2.6 MB each): the peer's are swept here.
        left = kill_conmons_of(set(made))
        if left:
            print(f"removed {left} conmon processes the peer's exec sessions left behind (Podman's REST API)", flush=True)


def kill_conmons_of(container_ids: set[str]) -> int:
    """Kill the conmon processes that watch these containers (or exec sessions in them)."""
    killed = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"conmon") and b"-c" in argv and argv[argv.index(b"-c") + 1].decode() in container_ids:
                os.kill(int(cmdline.parent.name), 9)
                killed += 1
        except (OSError, IndexError, ValueError):
            continue
    return killed
