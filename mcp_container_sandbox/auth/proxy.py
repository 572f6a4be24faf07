"""Sign-in for a team whose identity provider registers no clients (Google, Entra ID, most company
IdPs): the server fronts that provider's login with FastMCP's ``OIDCProxy``. It offers registration and
authorization to the AI app, signs the person in at the provider as the one client registered there,
and issues tokens of its own for this server. Only OAUTH_ALLOWED_USERS may sign in: anyone else is
shown a page that says so, and a token of someone no longer on the list is refused."""

from __future__ import annotations

import hashlib
import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client
from cryptography.fernet import Fernet
from fastmcp.server.auth import AccessToken
from fastmcp.server.auth.jwt_issuer import derive_jwt_key
from fastmcp.server.auth.oauth_proxy.ui import create_error_html
from fastmcp.server.auth.oidc_proxy import OIDCProxy
from fastmcp.utilities.auth import decode_jwt_payload
from key_value.aio.stores.filetree import (
    FileTreeStore,
    FileTreeV1CollectionSanitizationStrategy,
    FileTreeV1KeySanitizationStrategy,
)
from key_value.aio.wrappers.encryption import FernetEncryptionWrapper
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from ..settings import OAuthSettings
from .oauth import signed_in_tenant
from .static import TenantAccess

logger = logging.getLogger("mcp_sandbox.auth")

SCOPES = ["openid", "email"]  # asked of the provider: the ID token then names the person's email
_refusal: ContextVar[list[str] | None] = ContextVar("sign_in_refusal", default=None)


def allowed(claims: dict[str, Any], allowed_users: tuple[str, ...]) -> bool:
    """Whether the person the ID token names may sign in: by subject, or by an email the provider has
    not said is unverified."""
    if "*" in allowed_users:
        return True
    listed = {user.lower() for user in allowed_users}
    email = str(claims.get("email") or "").lower()
    return str(claims.get("sub") or "").lower() in listed or (
        bool(email) and claims.get("email_verified") is not False and email in listed)


def who(claims: dict[str, Any]) -> str:
    return str(claims.get("email") or claims.get("sub") or "someone without an email or subject")


def encrypted_store(directory: Path, secret: str) -> FernetEncryptionWrapper:
    """Client registrations and the provider's tokens, on disk in the state folder (so tokens this
    server issued outlive a restart), encrypted with a key derived from the client secret."""
    key = derive_jwt_key(high_entropy_material=secret, salt="mcp-container-sandbox oauth store")
    directory = directory / hashlib.sha256(key).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = FileTreeStore(data_directory=directory,
                          key_sanitization_strategy=FileTreeV1KeySanitizationStrategy(directory),
                          collection_sanitization_strategy=FileTreeV1CollectionSanitizationStrategy(directory))
    return FernetEncryptionWrapper(key_value=files, fernet=Fernet(key=key), raise_on_decryption_error=False)


class SignInProxy(OIDCProxy):
    """FastMCP's OIDC proxy, with OAUTH_ALLOWED_USERS and a tenant for each signed-in person."""

    def __init__(self, oauth: OAuthSettings, base_url: str, state_dir: str) -> None:
        try:
            self._start(oauth, base_url, state_dir)
        except Exception as exc:  # FastMCP reads the provider's OpenID configuration here
            raise ValueError(f"OAUTH_PROXY_UPSTREAM_ISSUER: could not read the OpenID configuration of "
                             f"{oauth.proxy_upstream_issuer} ({exc}); check the URL and that the provider is up") from exc
        self.oauth = oauth
        self.upstream_issuer = str(self.oidc_config.issuer).rstrip("/")

    def _start(self, oauth: OAuthSettings, base_url: str, state_dir: str) -> None:
        super().__init__(
            config_url=f"{oauth.proxy_upstream_issuer.rstrip('/')}/.well-known/openid-configuration",
            client_id=oauth.proxy_client_id, client_secret=oauth.proxy_client_secret, base_url=base_url,
            # The ID token: a JWT at every OpenID provider, where access tokens may be opaque (Google's).
            verify_id_token=True, required_scopes=[*SCOPES, *oauth.required_scopes],
            forward_resource=False,  # the provider signs the person in; the resource is this server's own tokens
            client_storage=encrypted_store(Path(state_dir) / "oauth-proxy", oauth.proxy_client_secret),
        )

    def _create_upstream_oauth_client(self) -> AsyncOAuth2Client:
        """FastMCP's client for the provider, whose code exchange refuses a person not allowed before
        any token of ours exists (the ID token comes straight from the provider's token endpoint)."""
        client = super()._create_upstream_oauth_client()
        fetch_token = client.fetch_token

        async def fetch_allowed_token(url: str | None = None, **kwargs: Any) -> Any:
            token = await fetch_token(url=url, **kwargs)
            if not token.get("id_token"):
                raise ValueError("the identity provider sent no ID token: it must be an OpenID provider granting the "
                                 "openid scope")
            claims = decode_jwt_payload(token["id_token"])
            if not allowed(claims, self.oauth.allowed_users):
                refusal = _refusal.get()
                if refusal is not None:
                    refusal.append(who(claims))
                raise PermissionError(f"{who(claims)} is not in OAUTH_ALLOWED_USERS")
            return token

        client.fetch_token = fetch_allowed_token  # type: ignore[method-assign]
        return client

    async def _handle_idp_callback(self, request: Request) -> HTMLResponse | RedirectResponse:
        refusal: list[str] = []
        token = _refusal.set(refusal)
        try:
            response = await super()._handle_idp_callback(request)
        finally:
            _refusal.reset(token)
        if refusal:
            logger.warning("refused a sign-in: %s is not in OAUTH_ALLOWED_USERS", refusal[0])
            return HTMLResponse(create_error_html(
                error_title="Not allowed",
                error_message=(f"You signed in as {refusal[0]}, who may not use this sandbox server. Ask the person "
                               "who runs it to add you to OAUTH_ALLOWED_USERS."),
            ), status_code=403)
        return response

    async def load_access_token(self, token: str) -> TenantAccess | None:  # type: ignore[override]
        access: AccessToken | None = await super().load_access_token(token)
        if access is None:
            return None
        claims = access.claims or {}
        if not allowed(claims, self.oauth.allowed_users):  # taken off the list since signing in
            logger.info("refused a token of %s: not in OAUTH_ALLOWED_USERS", who(claims))
            return None
        subject = claims.get(self.oauth.tenant_claim)
        if subject in (None, ""):
            logger.info("refused a token without the tenant claim %r", self.oauth.tenant_claim)
            return None
        return TenantAccess(**access.model_dump(exclude={"claims"}), claims=claims,
                            tenant=signed_in_tenant(self.upstream_issuer, str(subject)))
