"""A STAND-IN for the Kubernetes API server's Pod endpoints (no API server can run on these machines),
answering as the real one does for what the sandbox backend asks: create (422 for an object the API's
own schemas refuse, checked with kubernetes-validate; 409 AlreadyExists), get (404), list by label
selector, watch from a resourceVersion (events as JSON lines; an ERROR event with 410 Expired for a
version older than its window), merge patch conditioned on metadata.resourceVersion (409 Conflict),
delete; and 403 Forbidden for the verbs a test takes away (RBAC). Served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes_validate
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PODS = "/api/v1/namespaces/{namespace}/pods"
WINDOW = 50  # events a watch can resume from; older versions are 410 Expired, as after etcd's compaction


def status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": message, "reason": reason, "code": code}, status_code=code)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def matches(pod: dict[str, Any], selector: str) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, _, value in
               (term.partition("=") for term in selector.split(",") if term))


class KubeApiStandIn:
    def __init__(self, version: str = "1.33.0") -> None:
        self.version = version
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.forbidden: set[str] = set()  # verbs refused with 403, as a Role without them would
        self._versions = itertools.count(1000)
        self._changed: asyncio.Condition | None = None
        self.app = Starlette(routes=[
            Route(PODS, self.collection, methods=["GET", "POST"]),
            Route(PODS + "/{name}", self.one, methods=["GET", "PATCH", "DELETE"]),
        ])

    def _refused(self, verb: str, request: Request) -> JSONResponse | None:
        if verb not in self.forbidden:
            return None
        namespace = request.path_params["namespace"]
        return status(403, "Forbidden", f'pods is forbidden: User "system:serviceaccount:{namespace}:mcp-sandbox" '
                                        f'cannot {verb} resource "pods" in API group "" in the namespace "{namespace}"')

    async def _record(self, kind: str, pod: dict[str, Any]) -> None:
        version = next(self._versions)
        pod["metadata"]["resourceVersion"] = str(version)
        self.events = [*self.events, (version, kind, json.loads(json.dumps(pod)))][-WINDOW:]
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()

    async def collection(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        if request.method == "POST":
            if refused := self._refused("create", request):
                return refused
            pod = await request.json()
            try:
                kubernetes_validate.validate(pod, self.version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return status(422, "Invalid", f"Pod is invalid: {exc.message}")
            name = pod["metadata"]["name"]
            if (namespace, name) in self.pods:
                return status(409, "AlreadyExists", f'pods "{name}" already exists')
            pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                   creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            pod["status"] = {"phase": "Running"}
            self.pods[(namespace, name)] = pod
            await self._record("ADDED", pod)
            return JSONResponse(pod, status_code=201)
        verb = "watch" if request.query_params.get("watch") in ("1", "true") else "list"
        if refused := self._refused(verb, request):
            return refused
        selector = request.query_params.get("labelSelector", "")
        if verb == "watch":
            return StreamingResponse(self._watch(namespace, selector, int(request.query_params.get("resourceVersion")
                                                                          or 0)), media_type="application/json")
        items = [pod for (ns, _), pod in self.pods.items() if ns == namespace and matches(pod, selector)]
        latest = self.events[-1][0] if self.events else 999
        return JSONResponse({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(latest)},
                             "items": items})

    async def _watch(self, namespace: str, selector: str, since: int) -> AsyncIterator[bytes]:
        if self._changed is None:
            self._changed = asyncio.Condition()
        if self.events and since < self.events[0][0] - 1:
            gone = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({self.events[0][0]})"}
            yield (json.dumps({"type": "ERROR", "object": gone}) + "\n").encode()
            return
        while True:
            for version, kind, pod in list(self.events):
                if version > since and pod["metadata"].get("namespace") == namespace and matches(pod, selector):
                    yield (json.dumps({"type": kind, "object": pod}) + "\n").encode()
                since = max(since, version)
            async with self._changed:
                await self._changed.wait()

    async def one(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        verb = {"GET": "get", "PATCH": "patch", "DELETE": "delete"}[request.method]
        if refused := self._refused(verb, request):
            return refused
        pod = self.pods.get((namespace, name))
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        if verb == "get":
            return JSONResponse(pod)
        if verb == "delete":
            del self.pods[(namespace, name)]
            await self._record("DELETED", pod)
            return JSONResponse(pod)
        if request.headers.get("content-type") != "application/merge-patch+json":
            return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
        patch = await request.json()
        pod = self.pods.get((namespace, name))  # as it is now, after the body came: the check and the change are one step
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != pod["metadata"]["resourceVersion"]:
            return status(409, "Conflict", f'Operation cannot be fulfilled on pods "{name}": the object has been '
                                           "modified; please apply your changes to the latest version and try again")
        patched = merge(pod, patch)
        self.pods[(namespace, name)] = patched
        await self._record("MODIFIED", patched)
        return JSONResponse(patched)

    @contextmanager
    def serving(self, port: int) -> Iterator[str]:
        """Serve on 127.0.0.1:port in a thread of its own; yields the server's URL."""
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                               loop="asyncio", timeout_graceful_shutdown=1))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
