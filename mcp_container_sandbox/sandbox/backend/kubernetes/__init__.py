"""Sandboxes as Kubernetes Pods (docs/kubernetes.md): the backend (backend.py), the Pod a sandbox is
(pod.py), the API calls (api.py), and every process in a Pod over the pods/exec stream
(exec_stream.py, terminal.py)."""

from .pod import LABEL_EGRESS, egress_label, sandbox_pod

__all__ = ["LABEL_EGRESS", "egress_label", "sandbox_pod"]
