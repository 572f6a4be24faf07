"""AUTH_TOKENS: static bearer tokens, each a tenant, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fastmcp.server.auth import AccessToken, TokenVerifier


def tenant_id_for(identity: str) -> str:
    """A label-safe tenant id for a token or a signed-in identity, which it does not reveal (it lands in
    Podman labels)."""
    return "t-" + hashlib.sha256(identity.encode()).hexdigest()[:24]


class TenantAccess(AccessToken):
    """A verified token and the tenant it speaks for (kept through FastMCP's MultiAuth, which
    rewrites ``client_id``)."""

    tenant: str


class BearerTokens(TokenVerifier):
    """AUTH_TOKENS as bearer tokens: each token is a tenant, holding every scope the server requires
    (a static token is the operator's own grant)."""

    def __init__(self, tokens: tuple[str, ...] | list[str], scopes: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__()
        self._tokens = [(token.encode(), tenant_id_for(token)) for token in tokens]
        self._scopes = list(scopes)

    def tenant_of(self, token: str) -> str | None:
        """The token's tenant, or None for a token that is not ours."""
        offered = token.encode()
        tenant = None
        for known, known_tenant in self._tokens:  # no early exit: timing says nothing
            if hmac.compare_digest(offered, known):
                tenant = known_tenant
        return tenant

    async def verify_token(self, token: str) -> TenantAccess | None:
        tenant = self.tenant_of(token)
        if tenant is None:
            return None
        return TenantAccess(token=token, client_id=tenant, scopes=self._scopes, tenant=tenant)
