"""Who may call, as FastMCP's auth provider: static bearer tokens (AUTH_TOKENS), access tokens of an
authorization server (OAUTH_ISSUER) or of this server fronting an identity provider's login
(OAUTH_PROXY_UPSTREAM_ISSUER), with static tokens beside either. With OAuth the server is a protected
resource (RFC 9728):
it publishes its metadata for each MCP endpoint, and a call without a valid token is answered 401 with
a challenge that points at it."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastmcp.server.auth import AuthProvider, MultiAuth, RemoteAuthProvider, TokenVerifier
from fastmcp.server.auth.middleware import RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.routing import Route
from starlette.types import ASGIApp

from ..settings import ServerSettings
from .console_client import ConsoleSignIn, IssuerSignIn, ProxySignIn
from .oauth import OAuthTokens
from .proxy import SignInProxy
from .static import BearerTokens, TenantAccess

RESOURCE_NAME = "MCP container sandbox"


class StaticThenOAuth(TokenVerifier):
    """A static token first (in constant time, with no network), then the authorization server's: so a
    static token is never sent to the issuer's introspection endpoint. FastMCP's MultiAuth would try the
    authorization server first, and rewrites ``client_id``."""

    def __init__(self, static: BearerTokens, oauth: OAuthTokens) -> None:
        super().__init__()
        self.static, self.oauth = static, oauth

    async def verify_token(self, token: str) -> TenantAccess | None:
        return await self.static.verify_token(token) or await self.oauth.verify_token(token)


@dataclass
class Authentication:
    """What the server is built with: FastMCP's provider, the routes and guard of the root MCP endpoint
    (``/``, besides FastMCP's ``/mcp``), and token verification for preview requests."""

    provider: AuthProvider | None
    verifier: TokenVerifier | None
    root_routes: list[Route] = field(default_factory=list)
    root_metadata_url: AnyHttpUrl | None = None
    console_sign_in: ConsoleSignIn | None = None  # how the console signs a person in by OAuth

    async def verify(self, token: str) -> TenantAccess | None:
        access = await self.verifier.verify_token(token) if self.verifier else None
        return access if isinstance(access, TenantAccess) else None

    def guard_root(self, app: ASGIApp) -> ASGIApp:
        """The root MCP endpoint behind its own challenge, naming the root's metadata (whose resource is
        ``$BASE_URL/``: a client checks that the resource it is told about is the URL it called)."""
        if self.provider is None or self.root_metadata_url is None:
            return app
        return RequireAuthMiddleware(app, self.provider.required_scopes, self.root_metadata_url,
                                     self.provider.challenge_scopes)


def authentication(server: ServerSettings, state_dir: str) -> Authentication:
    """Who may call, for these settings (``state_dir``: where the sign-in proxy keeps what it must)."""
    oauth = server.oauth
    if oauth.proxy_upstream_issuer:
        return _signing_in_here(server, state_dir)
    static = BearerTokens(server.auth_tokens, oauth.required_scopes)
    if not oauth.issuer:
        return Authentication(static if server.auth_tokens else None, static if server.auth_tokens else None)
    tokens = OAuthTokens(oauth, oauth.audiences(server.base_url))
    verifier = StaticThenOAuth(static, tokens)
    scopes = list(oauth.required_scopes)
    # The issuer as it names itself (a str): a client compares it with the issuer's metadata as a string, and
    # pydantic's AnyHttpUrl would add a "/" to an issuer without a path.
    provider = RemoteAuthProvider(
        token_verifier=verifier, authorization_servers=[oauth.issuer], base_url=server.base_url,
        scopes_supported=scopes, required_scopes=scopes, challenge_scopes=scopes, resource_name=RESOURCE_NAME,
    )
    authn = Authentication(provider, verifier, console_sign_in=IssuerSignIn(oauth, server.base_url, state_dir,
                                                                                    tokens.metadata))
    return _with_root(authn, server.base_url, oauth.issuer, scopes)


def _signing_in_here(server: ServerSettings, state_dir: str) -> Authentication:
    """The server as the AI apps' authorization server, fronting OAUTH_PROXY_UPSTREAM_ISSUER; static tokens
    beside it (tried after its own, which it checks without the network)."""
    proxy = SignInProxy(server.oauth, server.base_url, state_dir)
    console = ProxySignIn(proxy, server.base_url)
    if not server.auth_tokens:
        return _with_root(Authentication(proxy, proxy, console_sign_in=console), server.base_url,
                          str(proxy.issuer_url), proxy.required_scopes)
    static = BearerTokens(server.auth_tokens, proxy.required_scopes)
    both = MultiAuth(server=proxy, verifiers={"static": static})
    return _with_root(Authentication(both, both, console_sign_in=console), server.base_url, str(proxy.issuer_url),
                      proxy.required_scopes)


def _with_root(authn: Authentication, base_url: str, issuer: str, scopes: list[str]) -> Authentication:
    """The root endpoint's own protected resource metadata, whose resource is ``$BASE_URL/``."""
    root = AnyHttpUrl(base_url + "/")
    authn.root_routes = create_protected_resource_routes(root, [issuer], scopes, RESOURCE_NAME)
    authn.root_metadata_url = build_resource_metadata_url(root)
    return authn
