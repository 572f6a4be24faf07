"""Tokens an authorization server issued for this server (OAUTH_ISSUER): a JWT is checked against the
issuer's keys with FastMCP's ``JWTVerifier``, an opaque token by introspection (RFC 7662) with its
``IntrospectionTokenVerifier``. Each signed-in identity is a tenant: the tenant claim qualified by the
issuer, so two issuers never share one."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.auth.providers.introspection import IntrospectionTokenVerifier
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.utilities.auth import decode_jwt_header

from ..settings import OAuthSettings
from .static import TenantAccess, tenant_id_for

logger = logging.getLogger("mcp_sandbox.auth")

# Signature algorithms a token may use: asymmetric only. ``none`` and the HMAC family are refused, so
# nobody can sign a token with the issuer's public key as an HMAC secret.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
METADATA_RETRY_SECONDS = 10.0
HTTP_TIMEOUT_SECONDS = 10.0
# A verified JWT is remembered (by its hash) this long at most, and never past its expiry: an agent's
# calls carry the same token, and checking its signature again costs a quarter of a millisecond.
REMEMBER_SECONDS = 60.0
REMEMBER_MAX = 4096


def metadata_urls(issuer: str) -> tuple[str, str]:
    """Where an issuer publishes its metadata: OpenID discovery, then RFC 8414 (its path after the
    well-known part)."""
    parts = urlsplit(issuer.rstrip("/"))
    return (f"{issuer.rstrip('/')}/.well-known/openid-configuration",
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}")


def signed_in_tenant(issuer: str, identity: str) -> str:
    """The tenant of a signed-in identity: the same claim at two issuers is two tenants."""
    return tenant_id_for(f"oauth\n{issuer.rstrip('/')}\n{identity}")


class IssuerMetadata:
    """The issuer's metadata, fetched on first use and kept; after a failure it is asked again at most
    every METADATA_RETRY_SECONDS."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._document: dict[str, Any] | None = None
        self._retry_at = 0.0
        self._lock = anyio.Lock()

    async def get(self) -> dict[str, Any]:
        """The metadata document; ValueError when the issuer does not publish one that names it."""
        async with self._lock:
            if self._document is None:
                if time.monotonic() < self._retry_at:
                    raise ValueError(f"the metadata of {self.issuer} could not be read a moment ago")
                try:
                    self._document = await self._fetch()
                except ValueError:
                    self._retry_at = time.monotonic() + METADATA_RETRY_SECONDS
                    raise
            return self._document

    async def _fetch(self) -> dict[str, Any]:
        problems = []
        async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
            for url in metadata_urls(self.issuer):
                try:
                    response = await client.get(url)
                    response.raise_for_status()
                    document = response.json()
                except (httpx2.HTTPError, ValueError) as exc:
                    problems.append(f"{url}: {exc}")
                    continue
                # RFC 8414 §3.3: the document must name the issuer it was asked for.
                named = document.get("issuer") if isinstance(document, dict) else None
                if str(named or "").rstrip("/") != self.issuer.rstrip("/"):
                    problems.append(f"{url}: names issuer {named!r}")
                    continue
                return document
        raise ValueError(f"no metadata for issuer {self.issuer}: " + "; ".join(problems))


class OAuthTokens(TokenVerifier):
    """Access tokens of one authorization server, issued for this server's resource."""

    def __init__(self, oauth: OAuthSettings, audience: tuple[str, ...]) -> None:
        super().__init__()
        self.oauth = oauth
        self.issuer = oauth.issuer.rstrip("/")
        # "https://idp.example" and "https://idp.example/" name the same issuer.
        self.issuers = [self.issuer, self.issuer + "/"]
        self.audience = list(audience)
        self.metadata = IssuerMetadata(oauth.issuer)
        self._by_algorithm: dict[str, JWTVerifier] = {}
        self._verified: OrderedDict[bytes, tuple[float, TenantAccess]] = OrderedDict()
        self._introspection = IntrospectionTokenVerifier(
            introspection_url=oauth.introspection_url, client_id=oauth.client_id,
            client_secret=oauth.client_secret, audience=self.audience,
        ) if oauth.introspection_url else None

    async def verify_token(self, token: str) -> TenantAccess | None:
        key = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(key)
        if remembered is not None and remembered[0] > time.time():
            return remembered[1]
        try:
            header = decode_jwt_header(token)
        except (ValueError, TypeError):
            header = None
        try:
            if header is None:  # not a JWT: an opaque token, which only the issuer can vouch for (every time)
                verified = await self._introspection.verify_token(token) if self._introspection else None
            else:
                verified = await self._verify_jwt(token, header)
        except Exception as exc:  # an unreachable issuer must not take the server down: the token is refused
            logger.warning("could not verify a token of %s: %s", self.issuer, exc)
            return None
        access = self._tenant_access(verified) if verified is not None else None
        if access is not None and header is not None:
            self._remember(key, access)
        return access

    def _remember(self, key: bytes, access: TenantAccess) -> None:
        until = time.time() + REMEMBER_SECONDS
        if access.expires_at is not None:
            until = min(until, access.expires_at)
        self._verified[key] = (until, access)
        while len(self._verified) > REMEMBER_MAX:
            self._verified.popitem(last=False)

    async def _verify_jwt(self, token: str, header: dict[str, Any]) -> AccessToken | None:
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            logger.info("refused a token signed with %r (allowed: %s)", algorithm, ", ".join(ALGORITHMS))
            return None
        verifier = self._by_algorithm.get(algorithm)
        if verifier is None:
            jwks_uri = self.oauth.jwks_uri or str((await self.metadata.get()).get("jwks_uri") or "")
            if not jwks_uri:
                raise ValueError(f"{self.issuer} publishes no jwks_uri; set OAUTH_JWKS_URI")
            verifier = self._by_algorithm.setdefault(algorithm, JWTVerifier(
                jwks_uri=jwks_uri, issuer=self.issuers, audience=self.audience, algorithm=algorithm))
        return await verifier.verify_token(token)

    def _tenant_access(self, access: AccessToken) -> TenantAccess | None:
        claims = access.claims or {}
        issuer = str(claims.get("iss", self.issuer)).rstrip("/")
        if issuer != self.issuer:  # an introspection answer about another issuer's token
            logger.info("refused a token of issuer %r (expected %s)", issuer, self.issuer)
            return None
        who = claims.get(self.oauth.tenant_claim)
        if not isinstance(who, (str, int)) or isinstance(who, bool) or who == "":
            logger.info("refused a token without the tenant claim %r", self.oauth.tenant_claim)
            return None
        return TenantAccess(**access.model_dump(exclude={"claims"}), claims=claims,
                            tenant=signed_in_tenant(self.issuer, str(who)))
