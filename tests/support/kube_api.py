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
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from support.kube import PodRunner

PODS = "/api/v1/namespaces/{namespace}/pods"
WINDOW = 50  # events a watch can resume from; older versions are 410 Expired, as after etcd's compaction


class BearerCheck:
    """401 for a request without the service account's token, as the API server answers."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or ())
            if headers.get(b"authorization", b"").decode() != f"Bearer {self.token}":
                if scope["type"] == "websocket":
                    await WebSocket(scope, receive, send).send_denial_response(status(401, "Unauthorized", "Unauthorized"))
                    return
                await status(401, "Unauthorized", "Unauthorized")(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    def __init__(self, version: str = "1.33.0", runner: PodRunner | None = None, token: str = "") -> None:
        """``runner``: what runs the Pods made (kube play); without one they are records only.
        ``token``: the bearer token every request must carry (401 without it), as a service account's."""
        self.version, self.runner, self.token = version, runner, token
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.forbidden: set[str] = set()  # verbs refused with 403, as a Role without them would
        self._versions = itertools.count(1000)
        self._changed: asyncio.Condition | None = None
        self.app = Starlette(routes=[
            Route("/version", self.get_version),
            Route(PODS, self.collection, methods=["GET", "POST"]),
            Route(PODS + "/{name}", self.one, methods=["GET", "PATCH", "DELETE"]),
            WebSocketRoute(PODS + "/{name}/exec", self.exec),
        ], middleware=[Middleware(BearerCheck, token=token)] if token else [])
        self._tasks: set[asyncio.Task[None]] = set()

    async def get_version(self, request: Request) -> Response:
        major, minor, _ = self.version.split(".")
        return JSONResponse({"major": major, "minor": minor, "gitVersion": f"v{self.version}-stand-in"})

    async def exec(self, websocket: WebSocket) -> None:
        """pods/exec: the kubelet's streaming, relayed into the Pod the runner runs (kubelet_exec.py)."""
        namespace, name = websocket.path_params["namespace"], websocket.path_params["name"]
        offered = websocket.scope.get("subprotocols") or []
        protocol = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        pod = self.pods.get((namespace, name))
        refusal = None
        if "create" in self.forbidden:
            refusal = status(403, "Forbidden", f'pods "{name}" is forbidden: cannot create resource "pods/exec"')
        elif pod is None:
            refusal = status(404, "NotFound", f'pods "{name}" not found')
        elif (pod.get("status") or {}).get("phase") != "Running" or self.runner is None:
            refusal = status(400, "BadRequest", f"unable to upgrade connection: pod {name} is not running")
        elif protocol is None:
            refusal = status(400, "BadRequest", "none of the offered subprotocols is spoken here")
        if refusal is not None:  # an HTTP answer instead of the upgrade, as the API server gives
            await websocket.send_denial_response(refusal)
            return
        await websocket.accept(subprotocol=protocol)

        async def incoming() -> AsyncIterator[bytes]:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes"):
                    yield message["bytes"]

        async def close() -> None:
            await websocket.close()

        query = {key: websocket.query_params.getlist(key) for key in websocket.query_params.keys()}
        await self.runner.kubelet.run(self.runner.played_name(name), query, protocol, websocket.send_bytes, incoming(),
                                      lambda: None, close)

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
            pod["status"] = {"phase": "Pending"} if self.runner else {"phase": "Running"}
            self.pods[(namespace, name)] = pod
            await self._record("ADDED", pod)
            if self.runner is not None:
                self._soon(self._run(namespace, name, json.loads(json.dumps(pod))))
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
            if self.runner is not None:
                self._soon(asyncio.to_thread(self.runner.remove, name))
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

    def _soon(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, namespace: str, name: str, pod: dict[str, Any]) -> None:
        """The kubelet's part: the Pod runs (kube play), then its status says so, as a watch would see."""
        assert self.runner is not None
        failure = await asyncio.to_thread(self.runner.play, pod)
        current = self.pods.get((namespace, name))
        if current is None:  # deleted while it started
            await asyncio.to_thread(self.runner.remove, name)
            return
        if failure:
            current["status"] = {"phase": "Failed", "reason": "StartError", "message": failure[-300:]}
        else:
            address = await asyncio.to_thread(self.runner.address, name)
            current["status"] = {"phase": "Running", "podIP": address, "containerStatuses": [
                {"name": "sandbox", "ready": True, "restartCount": 0, "image": pod["spec"]["containers"][0]["image"],
                 "imageID": "", "state": {"running": {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ")}}}]}
        await self._record("MODIFIED", current)

    def close(self) -> None:
        """Remove every Pod the runner still runs."""
        if self.runner is not None:
            for _, name in list(self.pods):
                self.runner.remove(name)
            self.pods.clear()

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
            self.close()
