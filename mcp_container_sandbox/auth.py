"""Who is calling: AUTH_TOKENS as bearer tokens, each token a tenant, and the tenant of the call
being answered. The sandbox domain only ever sees the tenant's id."""

from __future__ import annotations

import hashlib
import hmac

from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token, get_http_request
from starlette.types import Scope

from .sandbox import LOCAL_TENANT, TENANT_RE, PortLink


def tenant_id_for(token: str) -> str:
    """A label-safe tenant id for a token or client id, which it does not reveal (it lands in Podman labels)."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:24]


class BearerTokens(TokenVerifier):
    """AUTH_TOKENS as bearer tokens: each token is a tenant. Compared in constant time."""

    def __init__(self, tokens: tuple[str, ...] | list[str]) -> None:
        super().__init__()
        self._tokens = [(token.encode(), tenant_id_for(token)) for token in tokens]

    def tenant_of(self, token: str) -> str | None:
        """The token's tenant, or None for a token that is not ours."""
        offered = token.encode()
        tenant = None
        for known, known_tenant in self._tokens:  # no early exit: timing says nothing
            if hmac.compare_digest(offered, known):
                tenant = known_tenant
        return tenant

    async def verify_token(self, token: str) -> AccessToken | None:
        tenant = self.tenant_of(token)
        if tenant is None:
            return None
        return AccessToken(token=token, client_id=tenant, scopes=[])


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
    if access is None:  # cannot happen behind the auth middleware; refuse rather than guess
        raise ToolError("This server requires a bearer token (Authorization: Bearer <token>).")
    client_id = access.client_id or ""
    return client_id if TENANT_RE.match(client_id) else tenant_id_for(client_id)


class PreviewAuthorizer:
    """With PREVIEW_REQUIRE_AUTH, a preview request carries the bearer token of the link's tenant."""

    def __init__(self, required: bool, tokens: BearerTokens) -> None:
        self.required, self.tokens = required, tokens

    def __call__(self, scope: Scope, link: PortLink) -> bool:
        if not self.required:
            return True
        authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and bool(token) and self.tokens.tenant_of(token) == link.tenant
