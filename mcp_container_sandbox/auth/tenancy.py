"""The tenant of the call being answered, and of a preview request: the sandbox domain only ever sees
the tenant's id."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_access_token, get_http_request
from starlette.types import Scope

from ..sandbox import LOCAL_TENANT, PortLink
from .static import TenantAccess

Verify = Callable[[str], Awaitable[TenantAccess | None]]


def current_tenant(authenticated: bool) -> str:
    """The calling client's tenant: its token's, over authenticated HTTP; otherwise (no auth
    configured, or stdio, where whoever started the process is the only client) the local one."""
    if not authenticated:
        return LOCAL_TENANT
    try:
        get_http_request()
    except RuntimeError:
        return LOCAL_TENANT
    access = get_access_token()
    if not isinstance(access, TenantAccess):  # cannot happen behind the auth middleware; refuse rather than guess
        raise ToolError("This server requires a bearer token (Authorization: Bearer <token>).")
    return access.tenant


def bearer_token(scope: Scope) -> str:
    """The request's bearer token, or ""."""
    authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class PreviewAuthorizer:
    """With PREVIEW_REQUIRE_AUTH, a preview request carries a bearer token of the link's tenant: a
    static one or a signed-in person's."""

    def __init__(self, required: bool, verify: Verify) -> None:
        self.required, self.verify = required, verify

    async def __call__(self, scope: Scope, link: PortLink) -> bool:
        if not self.required:
            return True
        token = bearer_token(scope)
        access = await self.verify(token) if token else None
        return access is not None and access.tenant == link.tenant
