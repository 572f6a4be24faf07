"""Settings, read from the environment: the only module that reads it.

``SandboxSettings`` says how sandboxes are made and kept (the domain receives it as an argument),
``ServerSettings`` where the server listens and who may call it, ``Settings`` both; each has a
``from_env``. The product's fixed limits are not settings: see sandbox/contract.py.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "docker.io/library/alpine:3"


# --------------------------------------------------------------------------- settings


def _env_int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def _disk_limit(environ: Mapping[str, str]) -> int:
    value = _env_int(environ, "SANDBOX_DISK_LIMIT_BYTES", 2 * 1024 * 1024 * 1024, minimum=0)
    if 0 < value < 16 * 1024 * 1024:
        raise ValueError(f"SANDBOX_DISK_LIMIT_BYTES must be 0 (no disk of its own) or at least 16777216, got {value}")
    return value


def _env_float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a number of at least {minimum}, got {raw!r}")
    return value


CLUSTER_VARIABLES = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG")
BACKENDS = ("podman", "kubernetes")


def _podman_api(environ: Mapping[str, str]) -> str:
    value = environ.get("SANDBOX_PODMAN_API", "").strip() or "on"
    if value.lower() in ("on", "off"):
        return value.lower()
    if not value.startswith("unix:///"):
        raise ValueError(f"SANDBOX_PODMAN_API must be on (a Podman API service of the server's own), off (Podman's "
                         f"CLI alone) or unix:///path (the socket of a running `podman system service`), "
                         f"got {value[:80]!r}")
    return value


def _backend(environ: Mapping[str, str]) -> str:
    backend = environ.get("SANDBOX_BACKEND", "").strip().lower() or "podman"
    if backend not in BACKENDS:
        raise ValueError(f"SANDBOX_BACKEND must be podman (sandboxes as containers of this host) or kubernetes "
                         f"(as Pods of a cluster, docs/kubernetes.md), got {backend[:40]!r}")
    return backend


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how sandboxes run as Pods (docs/kubernetes.md): the namespace, a RuntimeClass (gVisor,
    say), and the node pool they are placed on (node labels to select, taints to tolerate)."""

    namespace: str = "mcp-sandboxes"
    runtime_class: str = ""
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[str, str, str], ...] = ()  # (key, value or "", effect or "")
    # Where the cluster is: the in-cluster service's host and port, and KUBECONFIG (backend/kubernetes/api.py).
    cluster_env: tuple[tuple[str, str], ...] = ()
    proxy: str = ""  # host:port at which sandboxes reach the servers' egress proxy (a Service); "": no allow_domains

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KubernetesSettings:
        selector = []
        for item in _env_list(environ, "SANDBOX_K8S_NODE_SELECTOR"):
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"SANDBOX_K8S_NODE_SELECTOR takes label=value pairs, comma-separated; got {item!r}")
            selector.append((key.strip(), value.strip()))
        tolerations = []
        for item in _env_list(environ, "SANDBOX_K8S_TOLERATIONS"):  # as kubectl taint writes them
            taint, _, effect = item.partition(":")
            key, _, value = taint.partition("=")
            if not key.strip() or effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(f"SANDBOX_K8S_TOLERATIONS takes key[=value][:NoSchedule|PreferNoSchedule|NoExecute], "
                                 f"comma-separated; got {item!r}")
            tolerations.append((key.strip(), value.strip(), effect))
        namespace = environ.get("SANDBOX_K8S_NAMESPACE", "").strip() or "mcp-sandboxes"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
            raise ValueError(f"SANDBOX_K8S_NAMESPACE must be a Kubernetes namespace name (lower-case letters, digits "
                             f"and '-', at most 63), got {namespace[:80]!r}")
        cluster_env = tuple((name, environ[name]) for name in CLUSTER_VARIABLES if environ.get(name))
        proxy = environ.get("SANDBOX_K8S_PROXY", "").strip()
        if proxy and not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", proxy):
            raise ValueError(f"SANDBOX_K8S_PROXY must be host:port (the Service in front of the servers' proxy port, "
                             f"e.g. mcp-sandbox-proxy.mcp-sandbox.svc:3128), got {proxy[:80]!r}")
        return cls(namespace=namespace, runtime_class=environ.get("SANDBOX_K8S_RUNTIME_CLASS", "").strip(),
                   node_selector=tuple(selector), tolerations=tuple(tolerations), cluster_env=cluster_env, proxy=proxy)


@dataclass(frozen=True)
class SandboxSettings:
    """How sandboxes are made and kept; read from the environment by ``from_env``."""

    image: str = DEFAULT_IMAGE
    allowed_images: tuple[str, ...] = ()
    ttl_seconds: int = 7200
    sync_wait_seconds: float = 3.0
    max_containers: int = 20
    max_per_tenant: int = 0  # 0: the same as max_containers
    output_limit_bytes: int = 64 * 1024
    output_file_max_bytes: int = 64 * 1024 * 1024
    max_command_bytes: int = 1024 * 1024
    file_max_bytes: int = 1024 * 1024 * 1024
    write_max_bytes: int = 4 * 1024 * 1024
    namespace: str = "default"
    podman: str = "podman"
    podman_timeout_seconds: float = 300.0
    podman_api: str = "on"  # on | off | unix:///path of a running `podman system service` (podman_api.py)
    netns: str = "server"  # server | podman: who makes sandboxes' network namespaces (backend/own_netns.py)
    runtime: str = ""
    network: str = ""
    network_sandboxes: int = 1000  # sandboxes one sandbox network takes before the next (sandbox_networks.py)
    egress: str = "public"  # public | none | open (egress.py)
    egress_allow_cidrs: tuple[str, ...] = ()
    proxy_port: int = 3128  # the egress proxy's port on the sandbox bridge's gateway
    max_allow_domains: int = 64
    secrets_file: str = ""  # NAME=value lines the egress proxy puts into requests (network/secrets.py)
    state_dir: str = "/var/lib/mcp-sandbox/state"  # what the server keeps on the host (allow-lists)
    reap_interval_seconds: float = 1.0
    agent_path: str = ""
    max_channels: int = 32
    channel_idle_seconds: float = 120.0
    pool_size: int = 2  # the warm pool's floor; 0 turns it off
    pool_max: int = 16  # what the pool may grow to after a burst of creates
    pool_idle_seconds: float = 300.0  # how long it keeps what a burst called for
    disk_limit_bytes: int = 2 * 1024 * 1024 * 1024  # 0: no disk of its own per sandbox
    backend: str = "podman"  # podman | kubernetes
    kubernetes: KubernetesSettings = KubernetesSettings()
    disk_dir: str = "/var/lib/mcp-sandbox/disks"
    snapshot_ttl_seconds: int = 7 * 24 * 3600
    max_snapshots_per_tenant: int = 10
    snapshot_max_bytes: int = 4 * 1024 * 1024 * 1024  # what one tenant's snapshots may hold together
    max_ports: int = 10  # preview links per sandbox
    max_volumes_per_tenant: int = 10
    volume_max_bytes: int = 4 * 1024 * 1024 * 1024  # what one tenant's volumes may hold together
    stdin_max_bytes: int = 1024 * 1024  # execute_command's stdin, and one write_stdin
    read_max_bytes: int = 1024 * 1024  # one read_file

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxSettings:
        env = os.environ if environ is None else environ
        image = env.get("SANDBOX_IMAGE", "").strip() or DEFAULT_IMAGE
        allowed = tuple(i.strip() for i in env.get("SANDBOX_ALLOWED_IMAGES", "").split(",") if i.strip())
        namespace = env.get("SANDBOX_NAMESPACE", "").strip() or "default"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", namespace):
            raise ValueError(f"SANDBOX_NAMESPACE may hold letters, digits, '.', '_' and '-' only, got {namespace!r}")
        output_limit = _env_int(env, "SANDBOX_OUTPUT_LIMIT_BYTES", 64 * 1024, minimum=1024)
        return cls(
            image=image,
            allowed_images=allowed,
            ttl_seconds=_env_int(env, "SANDBOX_TTL_SECONDS", 7200, minimum=1),
            sync_wait_seconds=_env_float(env, "SANDBOX_SYNC_WAIT_SECONDS", 3.0),
            max_containers=_env_int(env, "SANDBOX_MAX_CONTAINERS", 20, minimum=1),
            max_per_tenant=_env_int(env, "SANDBOX_MAX_PER_TENANT", 0, minimum=0),
            output_limit_bytes=output_limit,
            # A stream file keeps its first and last half of this; never less than one result's worth.
            output_file_max_bytes=max(
                output_limit, _env_int(env, "SANDBOX_OUTPUT_FILE_MAX_BYTES", 64 * 1024 * 1024, minimum=65536)
            ),
            max_command_bytes=_env_int(env, "SANDBOX_MAX_COMMAND_BYTES", 1024 * 1024, minimum=1024),
            file_max_bytes=_env_int(env, "SANDBOX_FILE_MAX_BYTES", 1024 * 1024 * 1024, minimum=1),
            write_max_bytes=_env_int(env, "SANDBOX_WRITE_MAX_BYTES", 4 * 1024 * 1024, minimum=1),
            stdin_max_bytes=_env_int(env, "SANDBOX_STDIN_MAX_BYTES", 1024 * 1024, minimum=1),
            read_max_bytes=_env_int(env, "SANDBOX_READ_MAX_BYTES", 1024 * 1024, minimum=1),
            namespace=namespace,
            podman=env.get("PODMAN", "").strip() or "podman",
            podman_timeout_seconds=_env_float(env, "SANDBOX_PODMAN_TIMEOUT_SECONDS", 300.0, minimum=1),
            podman_api=_podman_api(env),
            netns=_one_of(env, "SANDBOX_NETNS", NETNS_MAKERS),
            runtime=env.get("SANDBOX_RUNTIME", "").strip(),
            network=env.get("SANDBOX_NETWORK", "").strip(),
            network_sandboxes=_env_int(env, "SANDBOX_NETWORK_SANDBOXES", 1000, minimum=1, maximum=1000),
            egress=_one_of(env, "SANDBOX_EGRESS", EGRESS_POLICIES),
            egress_allow_cidrs=_cidrs(env, "SANDBOX_EGRESS_ALLOW_CIDRS"),
            proxy_port=_env_int(env, "SANDBOX_PROXY_PORT", 3128, minimum=1),
            max_allow_domains=_env_int(env, "SANDBOX_MAX_ALLOW_DOMAINS", 64, minimum=1),
            secrets_file=env.get("SANDBOX_SECRETS_FILE", "").strip(),
            state_dir=env.get("SANDBOX_STATE_DIR", "").strip() or "/var/lib/mcp-sandbox/state",
            agent_path=env.get("SANDBOX_AGENT", "").strip(),
            max_channels=_env_int(env, "SANDBOX_MAX_CHANNELS", 32, minimum=1),
            channel_idle_seconds=_env_float(env, "SANDBOX_CHANNEL_IDLE_SECONDS", 120.0, minimum=1),
            pool_size=_env_int(env, "SANDBOX_POOL_SIZE", 2, minimum=0),
            pool_max=_env_int(env, "SANDBOX_POOL_MAX", 16, minimum=0),
            pool_idle_seconds=_env_float(env, "SANDBOX_POOL_IDLE_SECONDS", 300.0, minimum=1),
            disk_limit_bytes=_disk_limit(env),
            backend=_backend(env),
            kubernetes=KubernetesSettings.from_env(env),
            disk_dir=env.get("SANDBOX_DISK_DIR", "").strip() or "/var/lib/mcp-sandbox/disks",
            snapshot_ttl_seconds=_env_int(env, "SANDBOX_SNAPSHOT_TTL_SECONDS", 7 * 24 * 3600, minimum=1),
            max_snapshots_per_tenant=_env_int(env, "SANDBOX_MAX_SNAPSHOTS_PER_TENANT", 10, minimum=0),
            snapshot_max_bytes=_env_int(env, "SANDBOX_SNAPSHOT_MAX_BYTES", 4 * 1024 * 1024 * 1024, minimum=0),
            max_ports=_env_int(env, "SANDBOX_MAX_PORTS", 10, minimum=0),
            max_volumes_per_tenant=_env_int(env, "SANDBOX_MAX_VOLUMES_PER_TENANT", 10, minimum=0),
            volume_max_bytes=_env_int(env, "SANDBOX_VOLUME_MAX_BYTES", 4 * 1024 * 1024 * 1024, minimum=8 * 1024 * 1024),
        )

    @property
    def images(self) -> tuple[str, ...]:
        """Images a client may ask for: the default one first."""
        return (self.image, *(i for i in self.allowed_images if i != self.image))


EGRESS_POLICIES = {"public": "the internet only, nothing of the host or its networks", "none": "no network",
                   "open": "everything; unsafe beyond a single-user laptop"}
NETNS_MAKERS = {"server": "the server makes sandboxes' network namespaces where it can: faster creates",
                "podman": "Podman's netavark makes them"}


def _one_of(environ: Mapping[str, str], name: str, choices: Mapping[str, str]) -> str:
    """One of ``choices`` (the first by default), each with what it means for the error that lists them."""
    value = environ.get(name, "").strip().lower() or next(iter(choices))
    if value not in choices:
        meanings = ", ".join(f"{choice} ({meaning})" for choice, meaning in choices.items())
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value[:40]!r}: {meanings}")
    return value


def _cidrs(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated IP networks, each checked (ValueError says which)."""
    cidrs = []
    for item in _env_list(environ, name):
        try:
            cidrs.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"{name}: {item[:80]!r} is not an IP network; write it like 10.1.2.0/24 or 2001:db8::/48, "
                "several separated by commas"
            ) from None
    return tuple(cidrs)


def _preview_domain(environ: Mapping[str, str]) -> str:
    domain = environ.get("PREVIEW_DOMAIN", "").strip().lower().strip(".")
    if domain and not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?", domain):
        raise ValueError(f"PREVIEW_DOMAIN must be a domain name like preview.example.com (a wildcard DNS record "
                         f"*.preview.example.com pointing at this server), got {domain[:80]!r}")
    return domain


def _env_bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be true or false, got {raw[:40]!r}")


def _env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in environ.get(name, "").split(",") if item.strip())


def _url(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{name} must be an http(s) URL without query or fragment, like https://login.example.com/, "
                         f"got {value[:80]!r}")
    return value


def _scopes(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(scope for scope in re.split(r"[\s,]+", environ.get(name, "")) if scope)


@dataclass(frozen=True)
class OAuthSettings:
    """Sign-in by OAuth (docs/signin.md): tokens of an authorization server (``issuer``), or of this
    server itself fronting an identity provider's login (``proxy_upstream_issuer``)."""

    issuer: str = ""
    audience: tuple[str, ...] = ()  # (): the server's MCP URLs, $BASE_URL/mcp and $BASE_URL/
    jwks_uri: str = ""  # "": the issuer's metadata says
    required_scopes: tuple[str, ...] = ()
    tenant_claim: str = "sub"
    introspection_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    proxy_upstream_issuer: str = ""
    proxy_client_id: str = ""
    proxy_client_secret: str = ""
    allowed_users: tuple[str, ...] = ()
    console_client_id: str = ""  # "": the console registers itself at the issuer where it can

    @property
    def enabled(self) -> bool:
        return bool(self.issuer or self.proxy_upstream_issuer)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], base_url: str) -> OAuthSettings:
        oauth = cls(
            issuer=_url(environ, "OAUTH_ISSUER"),
            audience=_env_list(environ, "OAUTH_AUDIENCE"),
            jwks_uri=_url(environ, "OAUTH_JWKS_URI"),
            required_scopes=_scopes(environ, "OAUTH_REQUIRED_SCOPES"),
            tenant_claim=environ.get("OAUTH_TENANT_CLAIM", "").strip() or "sub",
            introspection_url=_url(environ, "OAUTH_INTROSPECTION_URL"),
            client_id=environ.get("OAUTH_CLIENT_ID", "").strip(),
            client_secret=environ.get("OAUTH_CLIENT_SECRET", "").strip(),
            proxy_upstream_issuer=_url(environ, "OAUTH_PROXY_UPSTREAM_ISSUER"),
            proxy_client_id=environ.get("OAUTH_PROXY_CLIENT_ID", "").strip(),
            proxy_client_secret=environ.get("OAUTH_PROXY_CLIENT_SECRET", "").strip(),
            allowed_users=_env_list(environ, "OAUTH_ALLOWED_USERS"),
            console_client_id=environ.get("OAUTH_CONSOLE_CLIENT_ID", "").strip(),
        )
        oauth.check(base_url)
        return oauth

    def check(self, base_url: str) -> None:
        """ValueError for settings that cannot work together, saying what to set."""
        if self.enabled and not base_url:
            raise ValueError("OAuth sign-in needs BASE_URL, the server's public URL (like https://sandbox.example.com): "
                             "tokens are issued for it and its metadata names it")
        if self.issuer and self.proxy_upstream_issuer:
            raise ValueError("set OAUTH_ISSUER (tokens of your authorization server) or OAUTH_PROXY_UPSTREAM_ISSUER "
                             "(this server signs people in at that provider), not both")
        if self.introspection_url and not (self.client_id and self.client_secret):
            raise ValueError("OAUTH_INTROSPECTION_URL needs OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET, the client this "
                             "server introspects tokens as")
        if self.proxy_upstream_issuer and not (self.proxy_client_id and self.proxy_client_secret):
            raise ValueError("OAUTH_PROXY_UPSTREAM_ISSUER needs OAUTH_PROXY_CLIENT_ID and OAUTH_PROXY_CLIENT_SECRET, "
                             "the client registered for this server at that provider")
        if self.proxy_upstream_issuer and not self.allowed_users:
            raise ValueError("OAUTH_PROXY_UPSTREAM_ISSUER needs OAUTH_ALLOWED_USERS: the emails or subjects who may sign "
                             "in (comma-separated), or * for everyone the provider signs in")

    def audiences(self, base_url: str) -> tuple[str, ...]:
        """The resources a token must be issued for (one of them)."""
        return self.audience or (f"{base_url}/mcp", f"{base_url}/", base_url)


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens and who may call it; read from the environment by ``from_env``."""

    host: str = "127.0.0.1"
    port: int = 3000
    base_url: str = ""  # "": the address the client used over HTTP, else http://host:port
    auth_tokens: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    preview_domain: str = ""  # <token>.<preview_domain> serves a preview link at its root
    preview_require_auth: bool = False  # preview links also need the link's tenant's bearer token
    oauth: OAuthSettings = OAuthSettings()
    console_admin_tokens: tuple[str, ...] = ()  # see every tenant's sandboxes in the console, read-only

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        port_text = env.get("PORT", "").strip() or "3000"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"PORT must be a port number from 1 to 65535, got {port_text!r}")
        base_url = _url(env, "BASE_URL").rstrip("/")
        return cls(
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=int(port_text),
            base_url=base_url,
            auth_tokens=_env_list(env, "AUTH_TOKENS"),
            allowed_hosts=_env_list(env, "ALLOWED_HOSTS"),
            allowed_origins=_env_list(env, "ALLOWED_ORIGINS"),
            log_level=env.get("LOG_LEVEL", "").strip().lower() or "info",
            preview_domain=_preview_domain(env),
            preview_require_auth=_env_bool(env, "PREVIEW_REQUIRE_AUTH"),
            oauth=OAuthSettings.from_env(env, base_url),
            console_admin_tokens=_env_list(env, "CONSOLE_ADMIN_TOKENS"),
        )

    @property
    def authenticated(self) -> bool:
        """Whether calls need a bearer token (a static one or a signed-in person's)."""
        return bool(self.auth_tokens) or self.oauth.enabled


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with: what ``create_app`` takes."""

    server: ServerSettings
    sandbox: SandboxSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(ServerSettings.from_env(environ), SandboxSettings.from_env(environ))


# Every variable the settings read, with its default and what it is for: what
# ``mcp-container-sandbox --help`` prints. docs/configuration.md says more of each.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("HOST", "127.0.0.1", "address HTTP listens on"),
    ("PORT", "3000", "port HTTP listens on (over stdio: the port for file and preview URLs)"),
    ("BASE_URL", "the address a client used", "public URL of the server, in file and preview URLs"),
    ("AUTH_TOKENS", "unset: no authentication", "comma-separated bearer tokens; each is a tenant"),
    ("ALLOWED_HOSTS", "none", "further Host names the MCP endpoint accepts"),
    ("ALLOWED_ORIGINS", "none", "browser origins allowed to call the MCP endpoint"),
    ("LOG_LEVEL", "info", "log level"),
    ("PREVIEW_DOMAIN", "unset", "serve each preview link at <token>.<domain> too (wildcard DNS)"),
    ("PREVIEW_REQUIRE_AUTH", "false", "preview requests also need the link owner's bearer token"),
    ("CONSOLE_ADMIN_TOKENS", "none", "comma-separated tokens that see every tenant's sandboxes in /console/, read-only"),
    ("OAUTH_ISSUER", "unset: no OAuth", "authorization server whose access tokens sign people in"),
    ("OAUTH_AUDIENCE", "$BASE_URL/mcp, $BASE_URL/", "comma-separated resources a token must be issued for"),
    ("OAUTH_JWKS_URI", "the issuer's metadata", "where the issuer's signing keys are"),
    ("OAUTH_REQUIRED_SCOPES", "none", "scopes every token must hold (space- or comma-separated)"),
    ("OAUTH_TENANT_CLAIM", "sub", "token claim that, with the issuer, names the tenant"),
    ("OAUTH_INTROSPECTION_URL", "unset", "RFC 7662 endpoint for tokens that are not JWTs"),
    ("OAUTH_CLIENT_ID", "unset", "client this server introspects tokens as"),
    ("OAUTH_CLIENT_SECRET", "unset", "that client's secret"),
    ("OAUTH_PROXY_UPSTREAM_ISSUER", "unset", "identity provider this server signs people in at, issuing its own tokens"),
    ("OAUTH_PROXY_CLIENT_ID", "unset", "this server's client at that provider"),
    ("OAUTH_PROXY_CLIENT_SECRET", "unset", "that client's secret"),
    ("OAUTH_ALLOWED_USERS", "unset", "with the proxy: comma-separated emails or subjects who may sign in (* everyone)"),
    ("SANDBOX_BACKEND", "podman", "where sandboxes run: podman (this host) or kubernetes (Pods of a cluster)"),
    ("SANDBOX_K8S_NAMESPACE", "mcp-sandboxes", "Kubernetes namespace of sandbox Pods"),
    ("SANDBOX_K8S_PROXY", "unset", "host:port sandboxes reach the servers' allow_domains proxy at (a Service)"),
    ("KUBECONFIG", "~/.kube/config", "with SANDBOX_BACKEND=kubernetes outside a cluster: its current context"),
    ("KUBERNETES_SERVICE_HOST", "set by Kubernetes", "in a Pod: the API server, with the Pod's service account"),
    ("KUBERNETES_SERVICE_PORT", "set by Kubernetes", "in a Pod: the API server's port"),
    ("SANDBOX_K8S_RUNTIME_CLASS", "unset", "RuntimeClass of sandbox Pods (gvisor, say)"),
    ("SANDBOX_K8S_NODE_SELECTOR", "unset", "label=value pairs of the nodes sandbox Pods run on"),
    ("SANDBOX_K8S_TOLERATIONS", "unset", "taints sandbox Pods tolerate: key[=value][:effect], comma-separated"),
    ("OAUTH_CONSOLE_CLIENT_ID", "registered by the server", "public client the console signs people in as at OAUTH_ISSUER"),
    ("SANDBOX_IMAGE", DEFAULT_IMAGE, "image of new sandboxes"),
    ("SANDBOX_ALLOWED_IMAGES", "none", "comma-separated further images create_container may ask for"),
    ("SANDBOX_TTL_SECONDS", "7200", "sandbox lifetime, and the most ttl_seconds may ask for"),
    ("SANDBOX_SYNC_WAIT_SECONDS", "3", "how long execute_command waits before a command goes on in the background"),
    ("SANDBOX_MAX_CONTAINERS", "20", "most sandboxes at once on this server (the pool included)"),
    ("SANDBOX_MAX_PER_TENANT", "SANDBOX_MAX_CONTAINERS", "most sandboxes one tenant may hold"),
    ("SANDBOX_OUTPUT_LIMIT_BYTES", "65536", "bytes of each stream returned in a result"),
    ("SANDBOX_OUTPUT_FILE_MAX_BYTES", "67108864", "bytes of each stream kept in the sandbox (first and last half)"),
    ("SANDBOX_MAX_COMMAND_BYTES", "1048576", "longest command line accepted"),
    ("SANDBOX_FILE_MAX_BYTES", "1073741824", "largest file get_file_url shares"),
    ("SANDBOX_WRITE_MAX_BYTES", "4194304", "largest content write_file takes"),
    ("SANDBOX_STDIN_MAX_BYTES", "1048576", "largest stdin of execute_command, and of one write_stdin"),
    ("SANDBOX_READ_MAX_BYTES", "1048576", "most bytes one read_file returns"),
    ("SANDBOX_DISK_LIMIT_BYTES", "2147483648", "size of each sandbox's own disk; 0: Podman's storage, unbounded"),
    ("SANDBOX_DISK_DIR", "/var/lib/mcp-sandbox/disks", "where the sandboxes' disk images and mounts live"),
    ("SANDBOX_POOL_SIZE", "2", "sandboxes kept started ahead of demand at least (0: no pool)"),
    ("SANDBOX_POOL_MAX", "16", "what the pool may grow to after a burst of creates"),
    ("SANDBOX_POOL_IDLE_SECONDS", "300", "how long the pool keeps what a burst called for"),
    ("SANDBOX_MAX_CHANNELS", "32", "most command channels open at once"),
    ("SANDBOX_CHANNEL_IDLE_SECONDS", "120", "a command channel closes after this long unused"),
    ("SANDBOX_AGENT", "build/sandbox-agent", "the sandbox-agent binary copied into sandboxes"),
    ("SANDBOX_EGRESS", "public", "what sandboxes may reach: public, none or open"),
    ("SANDBOX_EGRESS_ALLOW_CIDRS", "none", "comma-separated ranges public lets sandboxes reach on purpose"),
    ("SANDBOX_PROXY_PORT", "3128", "port of the allow_domains proxy on the sandbox bridge's gateway"),
    ("SANDBOX_MAX_ALLOW_DOMAINS", "64", "most names in one sandbox's allow_domains"),
    ("SANDBOX_SECRETS_FILE", "unset", "NAME=value lines (mode 0600) the proxy puts into sandboxes' requests"),
    ("SANDBOX_STATE_DIR", "/var/lib/mcp-sandbox/state", "where the server keeps snapshots, allow-lists and links"),
    ("SANDBOX_SNAPSHOT_TTL_SECONDS", "604800", "how long a snapshot is kept"),
    ("SANDBOX_MAX_SNAPSHOTS_PER_TENANT", "10", "most snapshots one tenant may keep"),
    ("SANDBOX_SNAPSHOT_MAX_BYTES", "4294967296", "bytes one tenant's snapshots may hold together"),
    ("SANDBOX_MAX_PORTS", "10", "most preview links per sandbox"),
    ("SANDBOX_MAX_VOLUMES_PER_TENANT", "10", "most volumes one tenant may keep (0: no volumes)"),
    ("SANDBOX_VOLUME_MAX_BYTES", "4294967296", "bytes one tenant's volumes may hold together"),
    ("SANDBOX_NETWORK", "mcp-sandbox", "Podman bridge network of new sandboxes (none cuts them off)"),
    ("SANDBOX_NETWORK_SANDBOXES", "1000", "sandboxes one network takes before new ones go to the next (NAME-2, ...)"),
    ("SANDBOX_RUNTIME", "Podman's default", "OCI runtime for Podman (runc, /usr/bin/runsc)"),
    ("SANDBOX_NAMESPACE", "default", "label value that marks this server's sandboxes"),
    ("PODMAN", "podman", "the podman program"),
    ("SANDBOX_PODMAN_TIMEOUT_SECONDS", "300", "longest any one Podman command may take before its tool fails"),
    ("SANDBOX_PODMAN_API", "on", "Podman's REST API for creates, removals and listings: on, off, or unix:///socket"),
    ("SANDBOX_NETNS", "server", "who makes sandboxes' network namespaces: server (where it can; faster), podman"),
)
