"""Sandboxes as Kubernetes Pods (docs/kubernetes.md). What exists: the Pod a sandbox is (pod.py),
generated from the same ContainerSpec as a Podman container, with the product's limits; and a
process in it over the API server's pods/exec WebSocket (exec_stream.py). The backend that drives a
cluster through its API is not built yet, so SANDBOX_BACKEND does not exist yet either."""

from .pod import sandbox_pod

__all__ = ["sandbox_pod"]
