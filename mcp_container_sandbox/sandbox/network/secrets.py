"""Secrets that never enter a sandbox: create_container(secrets=[...]).

The server keeps the values (SANDBOX_SECRETS_FILE: one NAME=value a line, mode 0600, read again
when it changes). A sandbox gets a placeholder in its environment (``GITHUB_TOKEN=mcp-secret-
placeholder-…``); on requests to the secret's host through the egress proxy, the proxy puts the
real value into the named header and in place of the placeholder wherever else the client put it
(interception.py). A value is never in a tool's result, a log line or an error: messages name the
secret, never its value.
"""

from __future__ import annotations

import logging
import os
import re
import secrets as random
import ssl
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidAllowList
from .proxy import DOMAIN_RE, domain_allowed
from .secret_rules import SecretRule

logger = logging.getLogger("mcp_sandbox.secrets")

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
FRAMING_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
MAX_SECRETS = 16
PLACEHOLDER_PREFIX = "mcp-secret-placeholder-"


class InvalidSecret(InvalidAllowList):
    """create_container's secrets cannot be used as given (the message names the secret, never a value)."""


class SecretStore:
    """The values of SANDBOX_SECRETS_FILE, read again whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._seen: tuple[int, ...] | None = None
        self._values: dict[str, str] = {}
        self.why_not = "" if path else "SANDBOX_SECRETS_FILE is not set"

    def value(self, name: str) -> str | None:
        self._refresh()
        return self._values.get(name)

    def names(self) -> set[str]:
        self._refresh()
        return set(self._values)

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            status = self.path.stat()
        except OSError as exc:
            self._values, self._seen = {}, None
            self.why_not = f"SANDBOX_SECRETS_FILE {self.path} cannot be read ({exc.strerror})"
            return
        seen = (status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino, status.st_mode)  # chmod too
        if seen == self._seen:
            return
        self._seen = seen
        if stat.S_IMODE(status.st_mode) & 0o077:
            self._values = {}
            self.why_not = (f"SANDBOX_SECRETS_FILE {self.path} may be read by others (mode "
                            f"{stat.S_IMODE(status.st_mode):o}); its operator must chmod 600 it")
            logger.error("%s; no secret is used until then", self.why_not)
            return
        values: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, equals, value = line.partition("=")
            if not equals or not NAME_RE.match(name.strip()):
                logger.warning("SANDBOX_SECRETS_FILE line %d is not NAME=value; skipped", number)
                continue
            values[name.strip()] = value
        self._values, self.why_not = values, ""
        logger.info("read %d secret(s) from %s", len(values), self.path)


def check_secrets(asked: Sequence[dict[str, str]], domains: Sequence[str], store: SecretStore) -> tuple[SecretRule, ...]:
    """create_container's secrets checked, each given its placeholder; InvalidSecret says what is wrong."""
    if not asked:
        return ()
    if len(asked) > MAX_SECRETS:
        raise InvalidSecret(f"At most {MAX_SECRETS} secrets a sandbox.")
    known = store.names()
    rules = []
    for entry in asked:
        name, host = entry.get("name", ""), entry.get("host", "").strip().lower().rstrip(".")
        header, form = entry.get("header", "Authorization"), entry.get("format", "Bearer {value}")
        if not NAME_RE.match(name):
            raise InvalidSecret(f"A secret's name is letters, digits and '_' (like GITHUB_TOKEN); got {name[:80]!r}.")
        if name not in known:
            raise InvalidSecret(f"There is no secret named {name!r} on this server"
                                f"{' (' + store.why_not + ')' if store.why_not else ''}. Its operator keeps them in "
                                "SANDBOX_SECRETS_FILE.")
        if host.startswith("*.") or not DOMAIN_RE.match(host) or len(host) > 253:
            raise InvalidSecret(f"Secret {name}: host must be one exact host name like 'api.github.com'; got {host[:100]!r}.")
        if not domains or not domain_allowed(host, domains):
            raise InvalidSecret(f"Secret {name} is for {host}, which is not in the sandbox's allow_domains: the egress "
                                "proxy puts secrets into requests, so add the host to allow_domains.")
        if not HEADER_RE.match(header) or header.lower() in FRAMING_HEADERS:
            raise InvalidSecret(f"Secret {name}: header must be an HTTP header name other than Host, Content-Length, "
                                f"Transfer-Encoding or Connection; got {header[:80]!r}.")
        if form.count("{value}") != 1 or "\r" in form or "\n" in form or len(form) > 200:
            raise InvalidSecret(f"Secret {name}: format must hold '{{value}}' once, on one line (like 'Bearer {{value}}').")
        if any(rule.name == name for rule in rules):
            raise InvalidSecret(f"Secret {name} is named twice.")
        rules.append(SecretRule(name, host, header, form, PLACEHOLDER_PREFIX + random.token_hex(16)))
    return tuple(rules)


def secret_environment(rules: Sequence[SecretRule], bundle_path: str, ca_path: str) -> bytes:
    """The environment lines of a sandbox with secrets: each placeholder under its secret's name,
    and the CA bundle where the common TLS clients look for one."""
    if not rules:
        return b""
    lines = [f"{rule.name}={rule.placeholder}" for rule in rules]
    lines += [f"{variable}={bundle_path}" for variable in
              ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")]
    lines.append(f"NODE_EXTRA_CA_CERTS={ca_path}")
    return "".join(line + "\n" for line in lines).encode()


def host_bundle() -> bytes:
    """The host's system trust store as one file (what sandboxes trust besides the proxy's CA): the
    one OpenSSL was built with, whatever SSL_CERT_FILE the server itself runs with."""
    for candidate in (ssl.get_default_verify_paths().openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_bytes()
    return b""
