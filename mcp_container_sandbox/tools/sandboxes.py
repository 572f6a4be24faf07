"""Tools for the life of a sandbox: create_container, list_containers, check_container, destroy_container."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastmcp import Context
from pydantic import Field

from ..sandbox import LIMITS, LIMITS_IN_WORDS, SandboxError, lifetime_clock, utc_iso
from .app import COMMAND_APP_URI
from .area import ContainerId, NotBlank, ToolArea, tool
from .context import progress_reporter, tool_errors
from .create_options import (
    AllowDomains,
    FromSnapshot,
    IdempotencyKey,
    Image,
    Network,
    Secrets,
    SnapshotOnExpiry,
    TtlSeconds,
    VolumesToMount,
)
from .shaping import port_link_fields, sandbox_times, volume_fields
from .waits import MAX_WAIT
from .waits import current as current_waits

LIST_AT_ONCE = 8  # list_containers asks this many sandboxes at a time (those it must ask)

CREATE_DESCRIPTION = f"""Create an isolated Linux sandbox ({LIMITS_IN_WORDS}).

Returns its container_id for execute_command, check_container, get_file_url and destroy_container.
It is destroyed automatically at expires_at (two hours after creation by default). With snapshot_id
it starts with the files of that snapshot (a fork; the snapshot and its source stay as they are);
with snapshot_on_expiry=true its files are kept in a snapshot when its lifetime ends. volumes mounts
your named volumes (create_volume); secrets lets it use API keys of the server's without reading them."""


class SandboxTools(ToolArea):
    @tool(title="Create sandbox", description=CREATE_DESCRIPTION, app=COMMAND_APP_URI, read_only_hint=False,
          destructive_hint=False, open_world_hint=False)
    async def create_container(
        self,
        image: Image = None,
        ttl_seconds: TtlSeconds = None,
        network: Network = None,
        allow_domains: AllowDomains = None,
        snapshot_id: FromSnapshot = None,
        snapshot_on_expiry: SnapshotOnExpiry = False,
        idempotency_key: IdempotencyKey = None,
        volumes: VolumesToMount = None,
        secrets: Secrets = None,
    ) -> dict[str, Any]:
        with tool_errors():
            tenant = self.context.tenant()
            sandbox = await self.sandboxes.create(image, tenant, ttl_seconds, network, allow_domains,
                                                  snapshot_id, snapshot_on_expiry, idempotency_key,
                                                  tuple(spec.mount() for spec in volumes or ()),
                                                  tuple(spec.model_dump() for spec in secrets or ()))
            egress = self.sandboxes.egress_of(sandbox.container_id, tenant)
        return {
            "container_id": sandbox.container_id,
            "image": sandbox.image,
            "status": "running",
            "created_at": utc_iso(sandbox.created_at),
            "expires_at": utc_iso(sandbox.expires_at),
            "limits": LIMITS,
            "egress": egress,
            "snapshot_on_expiry": snapshot_on_expiry,
            **({"snapshot_id": snapshot_id} if snapshot_id is not None else {}),
            **({"volumes": volume_fields(sandbox)} if sandbox.volumes else {}),
        }

    @tool(title="List my sandboxes", read_only_hint=True, open_world_hint=False)
    async def list_containers(self) -> dict[str, Any]:
        """List your sandboxes: image, status, creation and expiry times, and their running commands."""
        with tool_errors():
            tenant = self.context.tenant()
            mine = self.sandboxes.list(tenant)
            running: dict[str, list[str] | None] = {}
            limit = anyio.Semaphore(LIST_AT_ONCE)

            async def look(container_id: str) -> None:
                async with limit:
                    try:
                        running[container_id] = await self.sandboxes.running_commands(container_id, tenant)
                    except SandboxError:
                        running[container_id] = None

            async with anyio.create_task_group() as group:
                for sandbox in mine:  # only those whose commands the server does not know are asked
                    known = self.sandboxes.known_running_commands(sandbox.container_id)
                    if known is None:
                        group.start_soon(look, sandbox.container_id)
                    else:
                        running[sandbox.container_id] = known
            now = lifetime_clock.now()
            listed = [{
                "container_id": sandbox.container_id,
                "image": sandbox.image,
                "status": "unavailable" if running.get(sandbox.container_id) is None else "running",
                **sandbox_times(sandbox, now),
                "running_commands": running.get(sandbox.container_id) or [],
            } for sandbox in mine]
        return {"containers": listed}

    @tool(title="Check sandbox or command", read_only_hint=True, open_world_hint=False)
    async def check_container(
        self,
        container_id: ContainerId,
        command_id: Annotated[
            str | None,
            Field(description="A command_id from execute_command; omit to list the sandbox's commands.", max_length=200),
            NotBlank,
        ] = None,
        wait_seconds: Annotated[
            float,
            Field(description="With command_id: wait up to this many seconds for the command to finish, "
                              "returning as soon as it does (instead of polling in a loop).", ge=0, le=MAX_WAIT),
        ] = 0,
        stdout_offset: Annotated[
            int | None, Field(description="With command_id: stdout bytes already seen; exactly what follows is "
                                          "returned (pass the last result's stdout_bytes to follow a long build).", ge=0)
        ] = None,
        stderr_offset: Annotated[
            int | None, Field(description="With command_id: stderr bytes already seen, as stdout_offset.", ge=0)
        ] = None,
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Show a sandbox's status, lifetime and commands; with command_id, that command's status, exit code and output so far.

        To follow a command that went on in the background, call this with its command_id and
        wait_seconds (up to 50; the running command's message says how long): it returns as soon as the
        command ends.
        """
        with tool_errors():
            tenant = self.context.tenant()
            if command_id is None:
                return {**await self._sandbox_state(container_id, tenant),
                        "commands": await self._commands(container_id, tenant)}
            waits, progress = current_waits()
            with self.context.waits.waiting(waits):
                state = await self.sandboxes.wait_for_command(
                    container_id, command_id, waits.allowed(wait_seconds, progress), tenant,
                    progress_reporter(ctx), stdout_offset, stderr_offset)
            command = self.context.command_result(container_id, state)
            if state.reason == "sandbox_gone" and container_id not in {s.container_id for s in self.sandboxes.list(tenant)}:
                return {"container_id": container_id, "status": "gone", "command": command}
            return {**await self._sandbox_state(container_id, tenant), "command": command}

    async def _sandbox_state(self, container_id: str, tenant: str) -> dict[str, Any]:
        sandbox = self.sandboxes.get(container_id, tenant)
        status = await self.sandboxes.container_status(container_id, tenant)
        base_url, domain = self.context.base_url(), self.context.server.preview_domain
        return {"container_id": container_id, "status": status, **sandbox_times(sandbox),
                **({"volumes": volume_fields(sandbox)} if sandbox.volumes else {}),
                "egress": self.sandboxes.egress_of(container_id, tenant),
                "snapshot_on_expiry": self.sandboxes.snapshot_on_expiry(container_id, tenant),
                "ports": [port_link_fields(link, base_url, domain)
                          for link in self.sandboxes.port_links(container_id, tenant)]}

    async def _commands(self, container_id: str, tenant: str) -> list[dict[str, Any]]:
        return [
            {
                "command_id": summary.command_id,
                "command": summary.command,
                "status": summary.status,
                "exit_code": summary.exit_code,
                "started_at": utc_iso(summary.started_at) if summary.started_at else None,
            }
            for summary in await self.sandboxes.list_commands(container_id, tenant)
        ]

    @tool(title="Change a sandbox's network access", read_only_hint=False, destructive_hint=False,
          idempotent_hint=True, open_world_hint=False)
    async def set_egress(
        self,
        container_id: ContainerId,
        network: Annotated[bool | None, Field(
            description="false: cut the sandbox off from every network now; true: back to the server's default. "
                        "Omit when giving allow_domains.")] = None,
        allow_domains: AllowDomains = None,
    ) -> dict[str, Any]:
        """Change where a running sandbox may connect, in place: its processes keep running.

        Send network=false to cut it off, network=true to give it the server's default back, or
        allow_domains to let it reach only those hosts through the proxy. Takes effect at once;
        open connections that are no longer allowed are cut. Commands started afterwards get the
        matching proxy settings; check_container shows the policy in force.
        """
        with tool_errors():
            tenant = self.context.tenant()
            await self.sandboxes.set_egress(container_id, network, allow_domains, tenant)
            return {"container_id": container_id, "egress": self.sandboxes.egress_of(container_id, tenant)}

    @tool(title="Destroy sandbox", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
          open_world_hint=False)
    async def destroy_container(self, container_id: ContainerId) -> dict[str, Any]:
        """Destroy a sandbox now, with everything in it; its file URLs stop working."""
        with tool_errors():
            await self.sandboxes.destroy(container_id, self.context.tenant())
        return {"container_id": container_id, "destroyed": True}

