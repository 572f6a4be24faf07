"""The Podman operations every sandbox pays for (run, create, start, inspect, remove, list),
through Podman's REST API where its service answers (podman_api.py) and through the CLI
otherwise (podman_cli.py; SANDBOX_PODMAN_API=off uses the CLI alone). Both answer alike: the
backend (podman.py) does not know which one served it.

The rest stays on the CLI: ``podman exec`` (the command channel is one long-lived exec per
sandbox, and the API's exec sessions leave a conmon behind each; see ENVIRONMENT), pause,
images, networks and the host's information, none of which a create or a command waits for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from ..errors import PodmanError
from .abstract import ContainerSpec
from .podman_api import ApiUnavailable, PodmanApi, message
from .podman_cli import Podman, PodmanResult, is_missing_container
from .podman_specgen import spec_generator

logger = logging.getLogger("mcp_sandbox.podman")


class PodmanEngine:
    def __init__(self, podman: Podman, api: PodmanApi | None = None) -> None:
        self.podman, self.api = podman, api

    async def run(self, spec: ContainerSpec, args: list[str]) -> tuple[str, str]:
        """Create and start a container (``args``: its ``podman run`` arguments); its id and Podman's warnings."""
        if self.api is not None:
            try:
                made = await self._api_create(spec, args)
                await self.start(spec.name, timeout=300)
                return made
            except ApiUnavailable as exc:
                await self._after_lost_create(spec.name, exc)
        started = await self.podman.run(*args, timeout=300, whole=True)
        return started.stdout.decode(errors="replace").strip(), started.stderr

    async def create(self, spec: ContainerSpec, args: list[str]) -> tuple[str, str]:
        """Create a container, not started; its id and Podman's warnings."""
        if self.api is not None:
            try:
                return await self._api_create(spec, args)
            except ApiUnavailable as exc:
                await self._after_lost_create(spec.name, exc)
        created = await self.podman.run("create", *args[2:], timeout=300, whole=True)
        return created.stdout.decode(errors="replace").strip(), created.stderr

    async def _api_create(self, spec: ContainerSpec, args: list[str]) -> tuple[str, str]:
        assert self.api is not None
        body = {**spec_generator(spec, self.podman.runtime), "containerCreateCommand": self.podman.argv(*args)}
        response = await self.api.request("POST", "/containers/create", "run", 300, whole=True, json=body)
        if response.status_code == 404 and "image" in message(response).lower():
            raise ApiUnavailable("the image is not on this host: the CLI pulls it")
        if response.status_code >= 400:
            raise PodmanError(["podman", "run"], None, message(response))
        made = response.json()
        return str(made.get("Id") or ""), "\n".join(made.get("Warnings") or ())

    async def _after_lost_create(self, name: str, why: ApiUnavailable) -> None:
        """The CLI takes over a create the API could not do; what the service may have made of it goes first."""
        logger.info("creating %s through Podman's CLI: %s", name, why)
        await self.podman.run("rm", "-f", "-v", "-t", "0", "--", name, check=False, timeout=120, whole=True)

    async def start(self, name: str, timeout: float = 60) -> None:
        if self.api is not None:
            try:
                await self.api.call("POST", f"/containers/{name}/start", "start", timeout, whole=True)
                return
            except ApiUnavailable:
                pass
        await self.podman.run("start", name, timeout=timeout, whole=True)

    async def inspect(self, name: str) -> dict | None:
        """What Podman knows of the container (``podman inspect``'s JSON); None when there is no such container."""
        if self.api is not None:
            try:
                response = await self.api.request("GET", f"/containers/{name}/json", "inspect", 60)
                if response.status_code == 404:
                    return None
                if response.status_code >= 400:
                    raise PodmanError(["podman", "inspect"], None, message(response))
                return response.json()
            except ApiUnavailable:
                pass
        result = await self.podman.run("inspect", "--type", "container", "--format", "json", "--", name, check=False,
                                       timeout=60)
        if result.exit_code != 0:
            if is_missing_container(result.stderr):
                return None
            raise PodmanError(result.argv, result.exit_code, result.stderr)
        return (json.loads(result.stdout or b"[{}]") or [{}])[0]

    async def remove(self, name: str) -> PodmanResult:
        """``podman rm -f -v -t 0``: the container, its volumes, at once; the result as the CLI's."""
        if self.api is not None:
            try:
                response = await self.api.request("DELETE", f"/containers/{name}", "rm", 120, whole=True,
                                                  params={"force": "true", "volumes": "true", "timeout": 0})
                failed = response.status_code >= 400
                return PodmanResult(["podman", "rm", name], 1 if failed else 0, b"",
                                    message(response) if failed else "")
            except ApiUnavailable:
                pass
        return await self.podman.run("rm", "-f", "-v", "-t", "0", "--", name, check=False, timeout=120, whole=True)

    async def list(self, labels: Mapping[str, str]) -> PodmanResult:
        """``podman ps -a --format json`` of the containers with these labels."""
        if self.api is not None:
            try:
                filters = json.dumps({"label": [f"{key}={value}" for key, value in labels.items()]})
                response = await self.api.request("GET", "/containers/json", "ps", 120,
                                                  params={"all": "true", "filters": filters})
                failed = response.status_code >= 400
                return PodmanResult(["podman", "ps"], 125 if failed else 0, b"[]" if failed else response.content,
                                    message(response) if failed else "")
            except ApiUnavailable:
                pass
        filters_args = [arg for key, value in labels.items() for arg in ("--filter", f"label={key}={value}")]
        return await self.podman.run("ps", "-a", "--format", "json", *filters_args, check=False)
