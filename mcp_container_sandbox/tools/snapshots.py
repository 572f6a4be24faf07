"""Tools for snapshots of a sandbox's files: snapshot_container, list_snapshots, delete_snapshot.
A fork is create_container(snapshot_id=...), in sandboxes.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from .area import ContainerId, NotBlank, ToolArea, tool
from .context import tool_errors
from .shaping import snapshot_fields

SnapshotId = Annotated[
    str, Field(description="A snapshot_id from snapshot_container or list_snapshots.", max_length=100), NotBlank
]


class SnapshotTools(ToolArea):
    @tool(title="Snapshot a sandbox's files", read_only_hint=False, destructive_hint=False, open_world_hint=False)
    async def snapshot_container(
        self,
        container_id: ContainerId,
        name: Annotated[str | None, Field(description="A name of your own for it, to find it in list_snapshots.", max_length=128),
                                  NotBlank] = None,
    ) -> dict[str, Any]:
        """Keep a sandbox's files as they are now: everything written, changed or deleted since it was made.

        Running processes, memory and mounted volumes are not kept. The sandbox is paused for the moment it takes and
        then carries on. create_container(snapshot_id=...) starts new sandboxes from it (forks);
        snapshots outlive their sandbox and expire after a few days (expires_at).
        """
        with tool_errors():
            tenant = self.context.tenant()
            volumes = [mount.path for mount in self.sandboxes.get(container_id, tenant).volumes]
            snapshot = await self.sandboxes.snapshot(container_id, name, tenant)
        if volumes:
            return {**snapshot_fields(snapshot), "note": f"The volumes at {', '.join(volumes)} are not in the snapshot "
                                                         "(a volume is kept apart from any sandbox); a fork mounts none."}
        return snapshot_fields(snapshot)

    @tool(title="List my snapshots", read_only_hint=True, open_world_hint=False)
    async def list_snapshots(self) -> dict[str, Any]:
        """List your snapshots: id, name, size, when taken and when they expire, the sandbox they came from,
        and why they were taken ('requested' by snapshot_container, or 'expired': at the end of a sandbox's life)."""
        with tool_errors():
            return {"snapshots": [snapshot_fields(snapshot)
                                  for snapshot in self.sandboxes.list_snapshots(self.context.tenant())]}

    @tool(title="Delete a snapshot", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
          open_world_hint=False)
    async def delete_snapshot(self, snapshot_id: SnapshotId) -> dict[str, Any]:
        """Delete a snapshot for good; sandboxes already made from it are not affected."""
        with tool_errors():
            self.sandboxes.delete_snapshot(snapshot_id, self.context.tenant())
        return {"snapshot_id": snapshot_id, "deleted": True}
