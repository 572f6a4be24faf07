"""Podman's libpod REST API, for the operations every sandbox pays for: one ``podman system
service`` answers them all, so a create costs no Go start-up, no configuration parsing and no
opening of Podman's database, and sixteen creates at once do not start sixteen processes.

``PodmanService`` is that service: the server's own, started at need on a socket in the
server's Podman working folder (conmon, which the service starts for each container, writes
there), started again when it died, stopped with the server and by the kernel when the server
dies; or a service of the system's (SANDBOX_PODMAN_API=unix:///run/podman/podman.sock), used
as it is. ``PodmanApi`` is its client (httpx over the socket); when the service cannot be
reached it raises ``ApiUnavailable`` and the caller goes through the CLI (podman_engine.py).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import time
from typing import Any

import anyio
import httpx

from ..errors import PodmanError
from .podman_cli import Podman

logger = logging.getLogger("mcp_sandbox.podman")

API_PREFIX = "/v4.0.0/libpod"
START_WAIT_SECONDS = 10.0  # for a new service to answer its socket
RETRY_SECONDS = 5.0  # a service that would not start is not tried again sooner


class ApiUnavailable(Exception):
    """The service could not be reached: the operation goes through the CLI instead."""


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child, between fork and exec)
    """The service gets SIGTERM when the server dies, even by SIGKILL: it finishes what it was
    asked (a container half made is worse) and exits."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PodmanService:
    """The ``podman system service`` the API talks to."""

    def __init__(self, podman: Podman, url: str = "") -> None:
        self.podman = podman
        self.external = url.removeprefix("unix://")  # a service the server neither starts nor stops
        self.process: subprocess.Popen[bytes] | None = None
        self._next_try = 0.0
        self._lock = anyio.Lock()
        self.path = self.external

    def running(self) -> bool:
        return bool(self.external) or (self.process is not None and self.process.poll() is None)

    async def ready(self) -> bool:
        """Whether the service answers; starts it (again) when it is not running, at most every RETRY_SECONDS."""
        if self.running():
            return True
        async with self._lock:
            if self.running():
                return True
            if time.monotonic() < self._next_try:
                return False
            self._next_try = time.monotonic() + RETRY_SECONDS
            return await self._start()

    async def _start(self) -> bool:
        if self.process is not None:
            logger.warning("Podman's API service ended (exit %s); starting it again: %s", self.process.returncode,
                           self._said())
        options = self.podman.spawn_options
        self.path = os.path.join(options["cwd"], "podman.sock")
        if os.path.exists(self.path):
            os.unlink(self.path)
        with open(os.path.join(options["cwd"], "podman-service.log"), "ab") as log:
            try:
                self.process = subprocess.Popen(  # noqa: S603  (argv list, no shell)
                    self.podman.argv("system", "service", "--time=0", f"unix://{self.path}"), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, preexec_fn=_die_with_parent, **options)
            except OSError as exc:
                logger.warning("Podman's API service could not start (%s): Podman's CLI serves every operation", exc)
                return False
        with anyio.move_on_after(START_WAIT_SECONDS):
            while self.process.poll() is None:
                if os.path.exists(self.path) and await self._pings():
                    logger.info("Podman's API service answers on %s (pid %d)", self.path, self.process.pid)
                    return True
                await anyio.sleep(0.02)
        logger.warning("Podman's API service did not answer within %g s (%s): Podman's CLI serves meanwhile",
                       START_WAIT_SECONDS, self._said())
        self.stop()
        return False

    async def _pings(self) -> bool:
        try:
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.path)) as client:
                return (await client.get("http://podman/_ping", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    def _said(self) -> str:
        try:
            with open(os.path.join(os.path.dirname(self.path), "podman-service.log"), "rb") as log:
                return log.read()[-300:].decode(errors="replace").strip() or "it said nothing"
        except OSError:
            return "no log"

    def kill(self, why: str) -> None:
        if self.external or self.process is None or self.process.poll() is not None:
            return
        logger.warning("killing Podman's API service (pid %d): %s", self.process.pid, why)
        self.process.kill()
        self.process.wait()
        self._next_try = 0.0

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PodmanApi:
    """Requests to the service; errors as PodmanError with Podman's message, as the CLI says it."""

    def __init__(self, service: PodmanService) -> None:
        self.service = service
        self._client: httpx.AsyncClient | None = None
        self._client_path = ""

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client_path != self.service.path:
            self._client_path = self.service.path
            self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.service.path),
                                             base_url=f"http://podman{API_PREFIX}", timeout=None)
        return self._client

    async def request(self, method: str, path: str, operation: str, timeout: float, whole: bool = False,
                      **kwargs: Any) -> httpx.Response:
        """One request; ``whole``: it is waited for even when the caller is cancelled (as the CLI's
        ``whole`` runs: the service goes on with a create its client left, and the container must
        be known). ``operation`` names it in errors ('podman run' failed: ...)."""
        if not await self.service.ready():
            raise ApiUnavailable("the service is not running")
        timeout = min(timeout, self.service.podman.timeout_cap or timeout)
        with anyio.CancelScope(shield=whole):
            try:
                with anyio.fail_after(timeout):
                    return await self._http().request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from None
            except TimeoutError:
                # What a hung service does later must not land: a create the caller gave up on would
                # make a sandbox no one knows of. It is killed (and started again at the next request);
                # the requests it had under way go through the CLI.
                self.service.kill(f"it did not answer a {method} {path} within {timeout:g} s")
                raise PodmanError(["podman", operation], None, f"no answer within {timeout:g} s from Podman's API "
                                  "service (SANDBOX_PODMAN_TIMEOUT_SECONDS caps it)",
                                  "Podman may be overloaded; try again.") from None

    async def call(self, method: str, path: str, operation: str, timeout: float = 60, whole: bool = False,
                   **kwargs: Any) -> Any:
        """A request whose answer must be a success: its JSON (None when empty)."""
        response = await self.request(method, path, operation, timeout, whole, **kwargs)
        if response.status_code >= 400:
            raise PodmanError(["podman", operation], None, message(response))
        return response.json() if response.content else None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def message(response: httpx.Response) -> str:
    """Podman's error message in an answer ({"cause", "message", "response"})."""
    try:
        return str(json.loads(response.content).get("message") or response.text)
    except (ValueError, AttributeError):
        return response.text or f"HTTP {response.status_code}"
