"""The Kubernetes API as the sandbox backend uses it: Pods created, read, listed by label, watched,
patched (a claim conditioned on the Pod's resourceVersion) and deleted, over httpx; and where the
cluster is (in-cluster service account, else KUBECONFIG). Errors name what the API said and what to
do: 403 the verb and resource the server's Role lacks, 409 a conflict (someone else was first), 410 a
watch to start again from a new list, 422 what was invalid."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ...errors import SandboxError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_SECONDS = 30.0
TOKEN_REREAD_SECONDS = 60.0


class ApiError(SandboxError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(message)


class Conflict(ApiError):
    """409: the object changed since it was read (a claim someone else made first), or exists already."""


class Expired(ApiError):
    """410: a watch's resourceVersion is too old: list again and watch from the list's."""


@dataclass
class Cluster:
    """Where the API server is and how to be let in."""

    server: str
    token: str = ""
    ssl_context: ssl.SSLContext | bool = True
    client_cert: tuple[str, str] | None = None  # (certificate file, key file)
    headers: dict[str, str] = field(default_factory=dict)
    token_file: str = ""  # a service account's token, which the kubelet rotates: read again every minute
    _read_at: float = 0.0

    def bearer(self) -> dict[str, str]:
        """The Authorization header to send now ({} without a token)."""
        if self.token_file and time.monotonic() - self._read_at > TOKEN_REREAD_SECONDS:
            try:
                self.token = Path(self.token_file).read_text().strip()
                self._read_at = time.monotonic()
            except OSError:
                pass  # the last one read stays until the file is back
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    def find(cls, environ: Mapping[str, str]) -> Cluster:
        """The service account's cluster when running in one, else the current context of KUBECONFIG
        (or ~/.kube/config); ValueError saying which was looked for when there is neither."""
        host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
        if host and port and (SERVICE_ACCOUNT / "token").exists():
            context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            return cls(server, ssl_context=context, token_file=str(SERVICE_ACCOUNT / "token"))
        path = Path(environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config")
        if not path.is_file():
            raise ValueError(f"no Kubernetes cluster: not in a Pod with a service account, and no kubeconfig at {path} "
                             "(set KUBECONFIG)")
        return cls.from_kubeconfig(path.read_text(), str(path))

    @classmethod
    def from_kubeconfig(cls, text: str, where: str = "KUBECONFIG") -> Cluster:
        import yaml

        config = yaml.safe_load(text) or {}
        named = lambda kind, name: next(  # noqa: E731
            (item.get(kind[:-1]) or {} for item in config.get(kind) or () if item.get("name") == name), None)
        context = named("contexts", config.get("current-context"))
        if context is None:
            raise ValueError(f"{where} has no current-context to use")
        cluster, user = named("clusters", context.get("cluster")) or {}, named("users", context.get("user")) or {}
        if not cluster.get("server"):
            raise ValueError(f"{where}: the current context's cluster has no server")
        if user.get("exec") or user.get("auth-provider"):
            raise ValueError(f"{where}: the current user signs in through a plugin (exec/auth-provider); give the server "
                             "a service account token instead (deploy/kubernetes/)")
        verify: ssl.SSLContext | bool = not cluster.get("insecure-skip-tls-verify", False)
        if verify and (cluster.get("certificate-authority-data") or cluster.get("certificate-authority")):
            data = cluster.get("certificate-authority-data")
            verify = (ssl.create_default_context(cadata=base64.b64decode(data).decode()) if data
                      else ssl.create_default_context(cafile=cluster["certificate-authority"]))
        cert = None
        if user.get("client-certificate-data") or user.get("client-certificate"):
            cert = (_file(user, "client-certificate"), _file(user, "client-key"))
        return cls(str(cluster["server"]).rstrip("/"), str(user.get("token") or ""), verify, cert)


def _file(entry: Mapping[str, Any], key: str) -> str:
    """A kubeconfig's file, or its inline ``-data`` written to a private file (httpx takes files)."""
    if entry.get(f"{key}-data"):
        handle, name = tempfile.mkstemp(prefix="mcp-sandbox-kube-")
        with os.fdopen(handle, "wb") as out:
            out.write(base64.b64decode(entry[f"{key}-data"]))
        return name
    return str(entry[key])


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


class KubeApi:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self._http = httpx.AsyncClient(base_url=cluster.server, headers=cluster.headers, verify=cluster.ssl_context,
                                       cert=cluster.client_cert, timeout=TIMEOUT_SECONDS)

    @property
    def pods(self) -> str:
        return f"/api/v1/namespaces/{quote(self.namespace)}/pods"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            headers = {**kwargs.pop("headers", {}), **self.cluster.bearer()}
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"the Kubernetes API at {self.cluster.server} did not answer ({exc})") from None
        if response.status_code >= 400:
            raise _error(response, what)
        return response.json()

    async def version(self) -> str:
        """The API server's version (what /health shows); raises when it does not answer."""
        said = await self._call("GET", "/version", "get the version")
        return str(said.get("gitVersion") or "unknown")

    async def create_pod(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", self.pods, "create pods", json=manifest)

    async def get_pod(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", f"{self.pods}/{quote(name)}", "get pods")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, labels: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        """The Pods carrying all these labels, and the list's resourceVersion (to watch from)."""
        listed = await self._call("GET", self.pods, "list pods", params={"labelSelector": selector(labels)})
        return list(listed.get("items") or ()), str((listed.get("metadata") or {}).get("resourceVersion", ""))

    async def patch_pod(self, name: str, patch: Mapping[str, Any], resource_version: str = "") -> dict[str, Any]:
        """A merge patch; with ``resource_version``, only if the Pod is still that version (Conflict if not)."""
        body = dict(patch)
        if resource_version:
            body["metadata"] = {**(body.get("metadata") or {}), "resourceVersion": resource_version}
        return await self._call("PATCH", f"{self.pods}/{quote(name)}", "patch pods", content=json.dumps(body),
                                headers={"Content-Type": "application/merge-patch+json"})

    async def delete_pod(self, name: str, grace_seconds: int = 0) -> bool:
        """False when it was gone already."""
        try:
            await self._call("DELETE", f"{self.pods}/{quote(name)}", "delete pods",
                             params={"gracePeriodSeconds": str(grace_seconds)})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch_pods(self, labels: Mapping[str, str], resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(ADDED | MODIFIED | DELETED, pod) from that version on; Expired when it is too old."""
        params = {"labelSelector": selector(labels), "watch": "1", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true"}
        try:
            async with self._http.stream("GET", self.pods, params=params, timeout=httpx.Timeout(None),
                                         headers=self.cluster.bearer()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response, "watch pods")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, item = event.get("type", ""), event.get("object") or {}
                    if kind == "ERROR":
                        raise _status_error(item, "watch pods")
                    if kind != "BOOKMARK":
                        yield kind, item
        except httpx.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"the watch of the Kubernetes API broke off ({exc})") from None


def _error(response: httpx.Response, what: str) -> ApiError:
    try:
        status = response.json()
    except ValueError:
        status = {"code": response.status_code, "message": response.text[:300]}
    return _status_error({"code": response.status_code, **status}, what)


def _status_error(status: Mapping[str, Any], what: str) -> ApiError:
    code, reason = int(status.get("code") or 0), str(status.get("reason") or "")
    said = str(status.get("message") or reason or f"HTTP {code}")
    if code == 403:
        return ApiError(code, reason, f"the Kubernetes API forbids this server to {what} ({said}): its Role needs "
                                      f"that verb on that resource (docs/kubernetes.md lists them)")
    if code == 401:
        return ApiError(code, reason, f"the Kubernetes API did not accept this server's credentials ({said})")
    if code == 409:
        return Conflict(code, reason, f"conflict on {what}: {said}")
    if code == 410:
        return Expired(code, reason, f"{what}: {said}; list again")
    if code == 422:
        return ApiError(code, reason, f"the Kubernetes API found the object invalid ({said})")
    return ApiError(code, reason, f"the Kubernetes API refused to {what}: {said}")
