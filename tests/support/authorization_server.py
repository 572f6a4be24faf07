"""The sign-in tests' authorization server: oidc-provider (tests/e2e/authorization_server.mjs) run under
Node on loopback, and what the tests do with it over HTTP: sign a person in and consent, get tokens by
client credentials, rotate its keys, and sign tokens of their own with its key (the refusal cases)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

from support.ports import free_port

E2E = Path(__file__).resolve().parents[1] / "e2e"
SCRIPT = E2E / "authorization_server.mjs"


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})


class SignInRefused(Exception):
    def __init__(self, status: int, page: str) -> None:
        super().__init__(f"{status}: {page[:300]}")
        self.status, self.page = status, page


class AuthorizationServer:
    """One oidc-provider process; ``restart`` keeps its port (its issuer), as a rotation at a real
    provider keeps its URL."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir, self.env = workdir, env or {}
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = [new_key("key-1")]
        self.process: subprocess.Popen[str] | None = None

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[0]

    def start(self) -> None:
        keys_path = self.workdir / "idp-keys.json"
        keys_path.write_text(json.dumps({"keys": [key.as_dict(private=True) for key in self.keys]}))
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), str(self.port), str(keys_path)], cwd=E2E, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        while line and not line.startswith("ready "):  # Node's warnings before it listens
            line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the authorization server did not start (exit {self.process.wait()})")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def rotate(self, kid: str) -> None:
        """A new signing key, the old one still published (as providers roll keys)."""
        self.keys.insert(0, new_key(kid))
        self.stop()
        self.start()

    def metadata(self) -> dict[str, Any]:
        return httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10).json()

    def client_credentials(self, resource: str, scope: str = "sandbox") -> str:
        """An access token the provider issues to the m2m client for ``resource`` with ``scope``."""
        response = httpx.post(f"{self.issuer}/token", auth=("m2m", "m2m-secret"), timeout=10,
                              data={"grant_type": "client_credentials", "resource": resource, "scope": scope})
        response.raise_for_status()
        return response.json()["access_token"]

    def sign_in(self, authorize_url: str, user: str, client_redirect: str) -> str:
        """Sign ``user`` in, as a person in a browser would: consent at the provider, and on a consent page
        of the MCP server's own (when it fronts this provider) allow access. Returns the URL the browser is
        finally sent to at the client (``client_redirect``, with the code); SignInRefused when a page
        ends the way there."""
        with httpx.Client(timeout=10, follow_redirects=False) as browser:
            response = browser.get(authorize_url)
            for _ in range(20):
                if response.status_code in (302, 303):
                    location = urljoin(str(response.url), response.headers["location"])
                    if location.startswith(client_redirect):
                        return location
                    response = browser.get(location)
                elif response.status_code == 200 and response.headers["content-type"].startswith("application/json"):
                    base = str(response.url).split("?")[0]  # the provider's sign-in, then its consent
                    step = f"/login?user={user}" if response.json()["prompt"] == "login" else "/consent"
                    response = browser.post(base + step)
                elif response.status_code == 200 and 'name="action" value="approve"' in response.text:
                    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', response.text))
                    response = browser.post(str(response.url).split("?")[0], data={**fields, "action": "approve"})
                else:
                    raise SignInRefused(response.status_code, response.text)
        raise RuntimeError(f"signing in at {authorize_url} did not end at the client")

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None, header: dict[str, Any] | None = None) -> str:
        """A token of the tests' own, signed with the provider's key (or ``key``)."""
        key = key or self.signing_key
        now = int(time.time())
        claims = {"iss": self.issuer, "iat": now, "exp": now + 600, "sub": "crafted", **claims}
        return jwt.encode({"alg": "RS256", "kid": key.kid, **(header or {})}, claims, key)
