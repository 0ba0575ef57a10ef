#!/usr/bin/env bash
# Checks the deployment files without a cluster or a container engine: the Kubernetes
# manifests against the Kubernetes schemas (kubernetes-validate ships them, --strict refuses
# unknown fields), and docker-compose.yml against the Compose specification's schema
# (check-jsonschema's vendored copy). Both from PyPI, pinned, in .local/venv.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$ROOT/.local/venv"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
K8S_VERSION=1.33.0

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"

"$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" \
  "$ROOT/deploy/k8s/coupon-issuance.yaml"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/docker-compose.yml"
echo "deployment files valid"
