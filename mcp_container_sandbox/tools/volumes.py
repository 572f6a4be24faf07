"""Tools for named volumes: create_volume, list_volumes, delete_volume. A sandbox mounts them with
create_container(volumes=[...]), in sandboxes.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ..sandbox import utc_iso
from .area import NotBlank, ToolArea, tool
from .context import tool_errors

VolumeName = Annotated[str, Field(description="The volume's name: lowercase letters, digits, '_' or '-'.",
                                  max_length=63), NotBlank]


class VolumeTools(ToolArea):
    @tool(title="Create a volume", read_only_hint=False, destructive_hint=False, open_world_hint=False)
    async def create_volume(
        self,
        name: VolumeName,
        size_mb: Annotated[int, Field(description="Its size in MB; writing past it fails with 'No space left on device'.",
                                      ge=8)],
    ) -> dict[str, Any]:
        """Create a named volume: files that outlive sandboxes and can be shared between them.

        Mount it with create_container(volumes=[{"name": ..., "path": "/data"}]); several sandboxes may
        mount it at once, read-write or read-only. It stays until delete_volume; snapshots never include it.
        """
        with tool_errors():
            volume = await self.sandboxes.create_volume(name, size_mb, self.context.tenant())
        return {"name": volume.name, "size_mb": volume.size_bytes // (1024 * 1024),
                "created_at": utc_iso(volume.created_at)}

    @tool(title="List my volumes", read_only_hint=True, open_world_hint=False)
    async def list_volumes(self) -> dict[str, Any]:
        """List your volumes: size, bytes used, when made, and the sandboxes that mount them now."""
        with tool_errors():
            listed = self.sandboxes.list_volumes(self.context.tenant())
        return {"volumes": [{
            "name": volume.name,
            "size_mb": volume.size_bytes // (1024 * 1024),
            "used_bytes": used,
            "created_at": utc_iso(volume.created_at),
            "mounted_by": users,
        } for volume, used, users in listed]}

    @tool(title="Delete a volume", read_only_hint=False, destructive_hint=True, idempotent_hint=False,
          open_world_hint=False)
    async def delete_volume(self, name: VolumeName) -> dict[str, Any]:
        """Delete a volume and its files for good. A volume a sandbox mounts cannot be deleted: destroy
        those sandboxes first."""
        with tool_errors():
            await self.sandboxes.delete_volume(name, self.context.tenant())
        return {"name": name, "deleted": True}
