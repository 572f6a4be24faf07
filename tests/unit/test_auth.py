"""The parts of sign-in that need no authorization server: where an issuer's metadata is, and whose
tenant a token speaks for. The whole flow is tested against a real one in tests/e2e/test_signin.py."""

from __future__ import annotations

import pytest
from mcp_container_sandbox.auth import BearerTokens, tenant_id_for
from mcp_container_sandbox.auth.oauth import metadata_urls, signed_in_tenant

pytestmark = pytest.mark.anyio


def test_metadata_is_looked_for_by_openid_discovery_then_rfc_8414() -> None:
    assert metadata_urls("https://idp.example") == (
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server")
    # RFC 8414 §3.1: an issuer's path goes after the well-known part.
    assert metadata_urls("https://idp.example/realms/team/") == (
        "https://idp.example/realms/team/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server/realms/team")


def test_a_signed_in_tenant_is_qualified_by_its_issuer() -> None:
    alice_a = signed_in_tenant("https://a.example", "alice")
    assert alice_a == signed_in_tenant("https://a.example/", "alice")  # the same issuer
    assert alice_a != signed_in_tenant("https://b.example", "alice")
    assert alice_a != signed_in_tenant("https://a.example", "bob")
    assert alice_a != tenant_id_for("alice")  # nor a static token that happens to be the same string


async def test_static_tokens_hold_the_required_scopes_and_their_own_tenant() -> None:
    tokens = BearerTokens(["one-token", "two-token"], scopes=["sandbox"])
    access = await tokens.verify_token("two-token")
    assert access is not None and access.tenant == tenant_id_for("two-token") and access.scopes == ["sandbox"]
    assert await tokens.verify_token("three-token") is None


def test_a_sign_in_proxy_whose_provider_cannot_be_read_stops_the_server_saying_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    from mcp_container_sandbox.app import create_app
    from mcp_container_sandbox.settings import Settings

    with socket.socket() as closed:  # a port of this machine nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = Settings.from_env({
        "BASE_URL": "http://127.0.0.1:3000", "SANDBOX_STATE_DIR": str(tmp_path),
        "OAUTH_PROXY_UPSTREAM_ISSUER": f"http://127.0.0.1:{port}", "OAUTH_PROXY_CLIENT_ID": "c",
        "OAUTH_PROXY_CLIENT_SECRET": "s", "OAUTH_ALLOWED_USERS": "*",
    })
    with pytest.raises(ValueError, match="could not read the OpenID configuration of http://127.0.0.1"):
        create_app(settings)


async def test_the_console_says_what_to_set_where_the_issuer_registers_no_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mcp_container_sandbox.auth.console_client import BrowserSignIn, IssuerSignIn
    from mcp_container_sandbox.settings import OAuthSettings

    metadata = {"issuer": "https://idp.test", "authorization_endpoint": "https://idp.test/authorize",
                "token_endpoint": "https://idp.test/token"}

    async def known() -> dict[str, str]:
        return metadata

    unregistered = IssuerSignIn(OAuthSettings(issuer="https://idp.test"), "https://sandbox.test", str(tmp_path))
    unregistered.metadata.get = known  # type: ignore[method-assign]
    why = await unregistered.sign_in()
    assert isinstance(why, str) and "OAUTH_CONSOLE_CLIENT_ID" in why and "https://sandbox.test/console/" in why
    # No client of the console's: nothing is passed on to the issuer.
    status, answer = await unregistered.exchange({"grant_type": "authorization_code", "client_id": ""})
    assert status == 400 and answer["error"] == "invalid_request"

    named = IssuerSignIn(OAuthSettings(issuer="https://idp.test", required_scopes=("sandbox",),
                                       console_client_id="console-1"), "https://sandbox.test", str(tmp_path))
    named.metadata.get = known  # type: ignore[method-assign]
    way = await named.sign_in()
    assert way == BrowserSignIn("https://idp.test/authorize", "/console/api/sign-in/token", "console-1", "sandbox",
                                "https://sandbox.test/mcp", "https://sandbox.test/console/")
    status, answer = await named.exchange({"grant_type": "password", "client_id": "console-1"})
    assert status == 400
