"""Tools for a sandbox's files: write_file, read_file, list_files, and get_file_url to share one."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from pydantic import Field

from ..sandbox import SandboxError, utc_iso
from .area import ContainerId, NotBlank, ToolArea, tool
from .context import tool_errors
from .shaping import decoded, utf8_text


class FileTools(ToolArea):
    @tool(title="Write a file", read_only_hint=False, destructive_hint=True, open_world_hint=False)
    async def write_file(
        self,
        container_id: ContainerId,
        path: Annotated[str, Field(description="Absolute path in the sandbox; missing parent folders are created.", max_length=4096),
                        NotBlank],
        content: Annotated[str, Field(description="The file's content: text, or base64 when encoding is 'base64'.")],
        encoding: Annotated[
            str, Field(description="'text' (UTF-8) or 'base64' (for binary content).", pattern="^(text|base64)$")
        ] = "text",
        mode: Annotated[
            str | None, Field(description="Permission bits in octal, e.g. '755' for a script; default '644'.", pattern="^[0-7]{3,4}$")
        ] = None,
    ) -> dict[str, Any]:
        """Write a file into a sandbox without shell quoting (source code, data, scripts); replaces an existing file."""
        data = decoded(content, encoding, "content")
        with tool_errors():
            size = await self.sandboxes.write_file(container_id, path, data, int(mode, 8) if mode else None,
                                                   self.context.tenant())
        return {"container_id": container_id, "path": path, "size_bytes": size, "mode": mode or "644"}

    @tool(title="Read a file", read_only_hint=True, open_world_hint=False)
    async def read_file(
        self,
        container_id: ContainerId,
        path: Annotated[str, Field(description="Absolute path of a file in the sandbox.", max_length=4096), NotBlank],
        offset: Annotated[int, Field(description="Byte offset to start at (to page through a large file).", ge=0)] = 0,
        length: Annotated[
            int | None, Field(description="Bytes to read; omit for as much as one call returns (1 MiB by default).", ge=0)
        ] = None,
        encoding: Annotated[
            str, Field(description="'text' (UTF-8) or 'base64' (binary files).", pattern="^(text|base64)$")
        ] = "text",
    ) -> dict[str, Any]:
        """Read a file in a sandbox (up to 1 MiB per call; page with offset): content, size_bytes, eof."""
        with tool_errors():
            piece = await self.sandboxes.read_file(container_id, path, offset, length, self.context.tenant())
        data, end = piece.data, piece.offset + len(piece.data)
        if encoding == "text":
            content, kept = utf8_text(data, eof=end >= piece.size_bytes, path=path)
            data = data[:kept]  # a character cut at the end waits for the next call
            end = piece.offset + kept
        else:
            content = base64.b64encode(data).decode("ascii")
        result = {"path": path, "content": content, "encoding": encoding, "size_bytes": piece.size_bytes,
                  "offset": piece.offset, "length": len(data), "eof": end >= piece.size_bytes}
        if not result["eof"]:
            result["message"] = (f"Bytes {piece.offset:,} to {end:,} of {piece.size_bytes:,}; call read_file again "
                                 f"with offset={end} for the next part.")
        return result

    @tool(title="List a folder", read_only_hint=True, open_world_hint=False)
    async def list_files(
        self,
        container_id: ContainerId,
        path: Annotated[str, Field(description="Absolute path of a folder in the sandbox, e.g. /root.", max_length=4096),
                        NotBlank],
        depth: Annotated[int, Field(description="1: the folder's own entries; more: that many levels deep.", ge=1, le=10)] = 1,
    ) -> dict[str, Any]:
        """List a folder in a sandbox: each entry's name, path, type (file, dir, symlink, other), size_bytes,
        mode (octal) and modified_at; at most 1,000 entries (truncated says when more were left out)."""
        with tool_errors():
            entries, truncated = await self.sandboxes.list_files(container_id, path, depth, self.context.tenant())
        result: dict[str, Any] = {"path": path, "entries": [vars(entry) for entry in entries], "truncated": truncated}
        if truncated:
            result["message"] = (f"Only the first {len(entries):,} entries are listed. List a smaller depth or a "
                                 "subfolder, or use execute_command (find) with a filter.")
        return result

    @tool(title="Share a file as a URL", read_only_hint=True, open_world_hint=False)
    async def get_file_url(
        self,
        container_id: ContainerId,
        path: Annotated[str, Field(description="Absolute path of a regular file inside the sandbox, e.g. /tmp/report.txt.",
                                               max_length=4096), NotBlank],
    ) -> dict[str, Any]:
        """Make a download URL for a file in a sandbox, to give to the user (reports, archives, images, any output file).

        The URL serves the file as it is when downloaded, and stops working when the sandbox is destroyed.
        """
        with tool_errors():
            unavailable = self.context.links_unavailable()
            if unavailable:
                raise SandboxError(unavailable)
            tenant = self.context.tenant()
            link = await self.sandboxes.create_file_link(container_id, path, tenant)
            expires_at = utc_iso(self.sandboxes.get(container_id, tenant).expires_at)
        return {
            "url": f"{self.context.base_url()}/files/{link.file_id}",
            "path": link.path,
            "size_bytes": link.size_bytes,
            "content_type": link.content_type,
            "expires_at": expires_at,
        }
