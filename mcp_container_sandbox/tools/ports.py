"""Tools for the web apps sandboxes serve: expose_port (a preview URL to a port inside a sandbox)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ..sandbox import SandboxError, utc_iso
from .area import ContainerId, ToolArea, tool
from .context import tool_errors
from .shaping import port_link_fields


class PortTools(ToolArea):
    @tool(title="Share a port as a URL", read_only_hint=False, destructive_hint=False, open_world_hint=False)
    async def expose_port(
        self,
        container_id: ContainerId,
        port: Annotated[int, Field(description="The TCP port a server in the sandbox listens on (on 0.0.0.0 or 127.0.0.1).", ge=1, le=65535)],
    ) -> dict[str, Any]:
        """Make a URL for a web server, API or notebook running in a sandbox, to open in a browser or call from outside.

        Requests to the URL (any method, WebSockets too) reach the port inside the sandbox; start the
        server first (in the background, e.g. 'python3 -m http.server 8000 &'). The URL works until the
        sandbox is destroyed; asking again for the same port returns the same URL. Apps that build
        absolute links work best at host_url, when the server offers one.
        """
        with tool_errors():
            tenant = self.context.tenant()
            unavailable = self.context.links_unavailable()
            if unavailable:
                raise SandboxError(unavailable.replace("File URLs", "Preview URLs"))
            link = await self.sandboxes.expose_port(container_id, port, tenant)
            expires_at = utc_iso(self.sandboxes.get(container_id, tenant).expires_at)
        shown = port_link_fields(link, self.context.base_url(), self.context.server.preview_domain)
        return {**shown, "expires_at": expires_at}
