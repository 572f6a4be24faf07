"""Sandboxes as Kubernetes Pods (docs/kubernetes.md). What exists: the Pod a sandbox is (pod.py),
generated from the same ContainerSpec as a Podman container, with the product's limits, and
verified by running it under ``podman kube play``. The backend that drives a cluster through its API
is not built yet, so SANDBOX_BACKEND does not exist yet either."""

from .pod import sandbox_pod

__all__ = ["sandbox_pod"]
