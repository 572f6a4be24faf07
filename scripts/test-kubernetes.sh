#!/usr/bin/env bash
# Runs the Kubernetes backend's tool-flow tests (tests/integration/test_kubernetes_tools.py) against a
# real cluster instead of the stand-in: whatever cluster KUBECONFIG's current context names (kind, k3s,
# a cloud one). The server under test runs here and reaches the cluster through its API only.
#
#   KUBECONFIG=~/.kube/config SANDBOX_IMAGE=<an image the nodes can pull> scripts/test-kubernetes.sh
#
# The context's user needs the verbs of deploy/kubernetes/rbac.yaml in the namespace
# (SANDBOX_K8S_NAMESPACE, default mcp-sandboxes: kubectl apply -f deploy/kubernetes/namespaces.yaml
# makes it). The Pods it makes are deleted by the tests; leftovers carry the label mcp-sandbox.managed=true.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${KUBECONFIG:?set KUBECONFIG to the kubeconfig of the cluster to test against}"
: "${SANDBOX_IMAGE:?set SANDBOX_IMAGE to an image the nodes of the cluster can pull (with /bin/sh)}"
[ -r "${KUBECONFIG%%:*}" ] || { echo "test-kubernetes: cannot read ${KUBECONFIG%%:*}" >&2; exit 2; }
export MCP_SANDBOX_TEST_KUBECONFIG=${KUBECONFIG%%:*}
export MCP_SANDBOX_TEST_K8S_NAMESPACE=${SANDBOX_K8S_NAMESPACE:-mcp-sandboxes}
exec "$ROOT/scripts/test.sh" "$ROOT/tests/integration/test_kubernetes_tools.py" "$@"
