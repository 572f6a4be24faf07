"""What sign-in costs a call: the same tool call with an authorization server's JWT and with a static
token, on one server with both (OAUTH_ISSUER and AUTH_TOKENS), taken in turns once the issuer's keys
are cached; and the token checks alone, in this process: a JWT seen before, a new one, a static one.
The authorization server is oidc-provider on loopback (tests/e2e/authorization_server.mjs, as in the
sign-in tests)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from fastmcp import Client
from harness import Bench, free_port
from support.authorization_server import AuthorizationServer

from mcp_container_sandbox.auth import BearerTokens
from mcp_container_sandbox.auth.oauth import OAuthTokens
from mcp_container_sandbox.settings import OAuthSettings

STATIC = "bench-static-token-0123456789abcdef"


async def checks_alone(idp: AuthorizationServer, resource: str, count: int) -> dict[str, list[float]]:
    """The token checks in this process: a JWT seen before (remembered), new JWTs (signature, claims;
    the keys cached), a static token."""
    oauth, static = OAuthTokens(OAuthSettings(issuer=idp.issuer), (resource,)), BearerTokens([STATIC])
    fresh = [idp.sign({"aud": resource, "sub": f"bench-{n}"}) for n in range(count)]
    assert await oauth.verify_token(fresh[0]) is not None  # fetches the metadata and the keys once
    times: dict[str, list[float]] = {"seen": [], "new": [], "static": []}
    for token in fresh[1:]:
        for kind, verifier, offered in (("new", oauth, token), ("seen", oauth, fresh[0]), ("static", static, STATIC)):
            started = time.perf_counter()
            assert await verifier.verify_token(offered) is not None
            times[kind].append((time.perf_counter() - started) * 1000)
    return times


async def signin(bench: Bench, count: int) -> None:
    idp = AuthorizationServer(Path(tempfile.mkdtemp(prefix="mcp-bench-idp-")))
    idp.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = bench.spawn_server(f"{bench.namespace}-signin", port, {
        "BASE_URL": url, "OAUTH_ISSUER": idp.issuer, "AUTH_TOKENS": STATIC, "SANDBOX_POOL_SIZE": "0"})
    try:
        jwt = idp.client_credentials(url + "/mcp")
        async with Client(url + "/mcp", auth=jwt) as signed_in, Client(url + "/mcp", auth=STATIC) as operator:
            await signed_in.call_tool("list_containers", {})  # the issuer's metadata and keys, fetched once
            await operator.call_tool("list_containers", {})
            jwt_ms, static_ms = [], []
            for _ in range(count):
                static_ms.append(await bench.timed(lambda: operator.call_tool("list_containers", {})))
                jwt_ms.append(await bench.timed(lambda: signed_in.call_tool("list_containers", {})))
        added = statistics.median(jwt_ms) - statistics.median(static_ms)
        bench.row("list_containers, JWT / static token", jwt_ms, static_ms, note=f"a JWT adds {added:.2f} ms p50")
        alone = await checks_alone(idp, url + "/mcp", count)
        for kind, label in (("seen", "a JWT seen before"), ("new", "a new JWT")):
            added = statistics.median(alone[kind]) - statistics.median(alone["static"])
            bench.row(f"token check alone, {label} / static", alone[kind], alone["static"],
                      note=f"{added:.3f} ms p50 apart")
    finally:
        server.terminate()
        server.wait(timeout=60)
        idp.stop()
