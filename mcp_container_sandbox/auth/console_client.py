"""The console's sign-in in the browser (web/console.py, docs/console.md): the authorization code flow
with PKCE, the console's page a public OAuth client whose redirect is ``$BASE_URL/console/``, its
tokens the same access tokens the MCP endpoint takes.

- With OAUTH_ISSUER the client is OAUTH_CONSOLE_CLIENT_ID, or one this server registers at the issuer
  (RFC 7591) on first use and keeps in ``SANDBOX_STATE_DIR/console-client.json``. The page sends the
  code to this server (``/console/api/sign-in/token``), which passes it on to the issuer's token
  endpoint: the browser never calls the issuer itself, so the issuer needs no CORS for it and the
  console's Content Security Policy stays ``connect-src 'self'``.
- Fronting a provider (OAUTH_PROXY_*) this server is the authorization server: the console is a client
  registered with it in-process, and its ``/authorize`` and ``/token`` are the server's own."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import AnyUrl

from ..settings import OAuthSettings
from .oauth import HTTP_TIMEOUT_SECONDS, IssuerMetadata
from .proxy import SignInProxy

logger = logging.getLogger("mcp_sandbox.auth")

CLIENT_NAME = "MCP container sandbox console"
PROXY_CLIENT_ID = "mcp-sandbox-console"
TOKEN_ROUTE = "/console/api/sign-in/token"
GRANTS = ("authorization_code", "refresh_token")


@dataclass(frozen=True)
class BrowserSignIn:
    """What the page needs to send a person to sign in, and where to bring the code back."""

    authorization_endpoint: str
    token_endpoint: str  # on this server (a path): the page's fetch stays same-origin
    client_id: str
    scope: str
    resource: str
    redirect_uri: str

    def public(self) -> dict[str, str]:
        return asdict(self)


class ConsoleSignIn(Protocol):
    async def sign_in(self) -> BrowserSignIn | str:
        """How to sign in, or why the console cannot sign people in by OAuth here (a sentence)."""

    async def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (status, JSON) to the page's code or refresh token."""


class IssuerSignIn:
    """OAUTH_ISSUER's: a client of the console's own at the issuer, codes exchanged through this server."""

    def __init__(self, oauth: OAuthSettings, base_url: str, state_dir: str,
                 metadata: IssuerMetadata | None = None) -> None:
        """``metadata``: the issuer's, as the token check already reads it (one fetch for both)."""
        self.oauth, self.base_url = oauth, base_url
        self.metadata = metadata or IssuerMetadata(oauth.issuer)
        self.saved = Path(state_dir) / "console-client.json"
        self._client_id = oauth.console_client_id
        self._lock = anyio.Lock()

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/console/"

    async def sign_in(self) -> BrowserSignIn | str:
        try:
            metadata = await self.metadata.get()
            client_id = await self._client(metadata)
        except (ValueError, OSError, httpx2.HTTPError) as exc:
            return f"The console cannot sign in at {self.oauth.issuer} ({exc}); paste an access token instead."
        if not client_id:
            return (f"{self.oauth.issuer} registers no clients itself: register a public client with redirect URI "
                    f"{self.redirect_uri} there and set OAUTH_CONSOLE_CLIENT_ID; or paste an access token.")
        return BrowserSignIn(str(metadata["authorization_endpoint"]), TOKEN_ROUTE, client_id,
                             " ".join(self.oauth.required_scopes), f"{self.base_url}/mcp", self.redirect_uri)

    async def _client(self, metadata: dict[str, Any]) -> str:
        """OAUTH_CONSOLE_CLIENT_ID, the client registered before, or one registered now ("" if it cannot be)."""
        async with self._lock:
            if self._client_id:
                return self._client_id
            try:
                saved = json.loads(self.saved.read_text())
                if saved.get("issuer") == self.oauth.issuer and saved.get("redirect_uri") == self.redirect_uri:
                    self._client_id = str(saved["client_id"])
                    return self._client_id
            except (OSError, ValueError, KeyError, AttributeError):
                pass
            endpoint = metadata.get("registration_endpoint")
            if not endpoint:
                return ""
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
                response = await client.post(str(endpoint), json={
                    "client_name": CLIENT_NAME, "redirect_uris": [self.redirect_uri], "grant_types": list(GRANTS),
                    "response_types": ["code"], "token_endpoint_auth_method": "none", "application_type": "web"})
            if response.status_code >= 400:
                raise ValueError(f"its client registration answered {response.status_code}: {response.text[:300]}")
            self._client_id = str(response.json()["client_id"])
            self.saved.parent.mkdir(parents=True, exist_ok=True)
            self.saved.write_text(json.dumps({"issuer": self.oauth.issuer, "redirect_uri": self.redirect_uri,
                                              "client_id": self._client_id}))
            logger.info("registered the console as client %s at %s", self._client_id, self.oauth.issuer)
            return self._client_id

    async def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Only the console's own grants go on, to the issuer's token endpoint; nothing is added."""
        if form.get("grant_type") not in GRANTS or not self._client_id or form.get("client_id") != self._client_id:
            return 400, {"error": "invalid_request",
                         "error_description": "Only the console's code or refresh token is exchanged here."}
        try:
            endpoint = str((await self.metadata.get())["token_endpoint"])
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
                response = await client.post(endpoint, data=form, headers={"Accept": "application/json"})
            return response.status_code, response.json()
        except (ValueError, KeyError, httpx2.HTTPError) as exc:
            return 502, {"error": "temporarily_unavailable",
                         "error_description": f"{self.oauth.issuer} could not be asked for a token ({exc})."}


class ProxySignIn:
    """Fronting a provider: the console is a client of this server's own authorization server."""

    def __init__(self, proxy: SignInProxy, base_url: str) -> None:
        self.proxy, self.base_url = proxy, base_url
        self._registered = False

    async def sign_in(self) -> BrowserSignIn | str:
        redirect_uri = f"{self.base_url}/console/"
        if not self._registered:
            await self.proxy.register_client(OAuthClientInformationFull(
                client_id=PROXY_CLIENT_ID, client_name=CLIENT_NAME, redirect_uris=[AnyUrl(redirect_uri)],
                grant_types=list(GRANTS), response_types=["code"], token_endpoint_auth_method="none",
                scope=" ".join(self.proxy.required_scopes)))
            self._registered = True
        issuer = str(self.proxy.issuer_url).rstrip("/")
        return BrowserSignIn(f"{issuer}/authorize", urlsplit(issuer).path + "/token", PROXY_CLIENT_ID,
                             " ".join(self.proxy.required_scopes), f"{self.base_url}/mcp", redirect_uri)

    async def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return 404, {"error": "invalid_request", "error_description": "This server's own /token takes the code."}
