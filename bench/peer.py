"""The peer in the bench: llm-sandbox (PyPI) driving Podman's REST API, doing the bench's work.

Runs in a venv of its own (bench.py makes it: ``llm-sandbox[podman]`` pulls in podman-py and
docker-py, which the server does not need) and talks to ``podman system service`` on the socket
bench.py starts. It reads one JSON request a line on stdin and answers each with one JSON line
on stdout; every time is taken here, around the library's own calls, in milliseconds.

Each sandbox is a ``SandboxPodmanSession`` with the image and the flags of the bench's raw
``podman run``: ``--init``, the memory, CPU and process limits, the ulimits this machine needs,
``sleep`` as its main process (the image's own ``/bin/sh`` on a terminal ignores SIGTERM, so the
library's ``close``, a stop without a timeout, would wait Podman's 10 s for every sandbox), and
``skip_environment_setup`` (the busybox image has no Python to set up).

  {"op": "create"}                       -> {"id", "ms"}       session.open()
  {"op": "bare"}                         -> {"ms"}             podman-py's create + start of the same container
  {"op": "exec", "id", "command"}        -> {"ms", "stdout"}   session.execute_command()
  {"op": "destroy", "id"}                -> {"ms"}             session.close()
  {"op": "life"}                         -> {"ms"}             open + execute_command("echo hi") + close
  {"op": "burst", "n"}                   -> {"times"}          n opens at once (threads), then closes them
  {"op": "parallel", "n", "seconds"}     -> {"calls", "errors", "latency"}  n threads, each its own sandbox
  end of input                           -> {"made"}           closes what is open; the IDs of all it made
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llm_sandbox.podman import SandboxPodmanSession
from podman import PodmanClient


class Peer:
    def __init__(self, socket: str, image: str, namespace: str) -> None:
        self.client = PodmanClient(base_url=f"unix://{socket}")
        self.image = image
        self.namespace = namespace
        self.sessions: dict[str, SandboxPodmanSession] = {}
        self.count = 0
        self.made: list[str] = []  # the IDs of the containers it made, for the bench's sweep

    def session(self) -> SandboxPodmanSession:
        return SandboxPodmanSession(
            client=self.client, image=self.image, lang="python", skip_environment_setup=True, keep_template=True,
            verbose=False,
            runtime_configs={
                "init": True, "command": ["sleep", "2147483647"], "mem_limit": "256m", "nano_cpus": 500_000_000,
                "pids_limit": 100, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                "ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024},
                            {"Name": "nproc", "Soft": 32768, "Hard": 32768}],
                "labels": {"mcp-sandbox.namespace": self.namespace},
            })

    def opened(self) -> tuple[SandboxPodmanSession, float]:
        started = time.perf_counter()
        session = self.session()
        session.open()
        ms = ms_since(started)
        self.made.append(session.container.id)
        return session, ms

    def create(self) -> dict[str, Any]:
        session, ms = self.opened()
        self.count += 1
        key = str(self.count)
        self.sessions[key] = session
        return {"id": key, "ms": ms}

    def bare(self) -> dict[str, Any]:
        """The peer's container made as its session makes it (podman-py's create, then start), without the
        session around it: what Podman's API alone takes for it."""
        session = self.session()
        configs = session._normalize_runtime_configs_for_podman(dict(session.config.runtime_configs))
        image = self.client.images.get(self.image)  # the session looks it up before its create too
        started = time.perf_counter()
        container = self.client.containers.create(image=image, detach=True, tty=True, user="root",
                                                  environment={"PYTHONUNBUFFERED": "1"}, **configs)
        container.start()
        ms = ms_since(started)
        self.made.append(container.id)
        return {"ms": ms}

    def exec(self, id: str, command: str) -> dict[str, Any]:
        started = time.perf_counter()
        result = self.sessions[id].execute_command(command)
        return {"ms": ms_since(started), "stdout": result.stdout, "exit_code": result.exit_code}

    def destroy(self, id: str) -> dict[str, Any]:
        started = time.perf_counter()
        self.sessions.pop(id).close()
        return {"ms": ms_since(started)}

    def life(self) -> dict[str, Any]:
        started = time.perf_counter()
        session = self.session()
        session.open()
        self.made.append(session.container.id)
        result = session.execute_command("echo hi")
        session.close()
        if result.stdout != "hi\n":
            raise RuntimeError(f"echo hi printed {result.stdout!r}")
        return {"ms": ms_since(started)}

    def burst(self, n: int) -> dict[str, Any]:
        with ThreadPoolExecutor(n) as pool:
            opened = list(pool.map(lambda _: self.opened(), range(n)))
            list(pool.map(lambda pair: pair[0].close(), opened))
        return {"times": [ms for _, ms in opened]}

    def parallel(self, n: int, seconds: float) -> dict[str, Any]:
        with ThreadPoolExecutor(n) as pool:
            sessions = [session for session, _ in pool.map(lambda _: self.opened(), range(n))]
        calls, errors, latency = [0], [0], []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def worker(session: SandboxPodmanSession) -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    ok = session.execute_command("echo hi").stdout == "hi\n"
                except Exception:  # noqa: BLE001 - an error is counted, as the server's are
                    ok = False
                with lock:
                    latency.append(ms_since(started))
                    calls[0] += 1
                    errors[0] += not ok

        threads = [threading.Thread(target=worker, args=(session,)) for session in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda session: session.close(), sessions))
        return {"calls": calls[0], "errors": errors[0], "latency": latency}


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def main() -> None:
    socket, image, namespace = sys.argv[1:4]
    peer = Peer(socket, image, namespace)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            answer = getattr(peer, op)(**request)
        except Exception as error:  # noqa: BLE001 - the bench reports it and stops
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
    for session in peer.sessions.values():
        session.close()
    print(json.dumps({"made": peer.made}), flush=True)


if __name__ == "__main__":
    main()
