#!/usr/bin/env bash
# Runs issuer-worker in the background and issuer-api in the foreground (release builds,
# settings from the environment or their defaults). Ctrl-C stops both gracefully.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"
LISTEN=${ISSUER_LISTEN:-127.0.0.1:8080}
OPS=${ISSUER_OPS_LISTEN:-127.0.0.1:8081}

"$BIN/issuer-worker" &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT

cat <<TXT

  issuer-api on http://$LISTEN, issuer-worker in the background. Try:

  curl -s -X POST http://$LISTEN/api/v1/coupons -H "Authorization: Bearer \$ISSUER_ADMIN_TOKEN" \\
       -H 'Content-Type: application/json' -d '{"name":"Flash sale","totalQuantity":500}'
  TOKEN=\$(deploy/local/mint-token.sh 42)   # README: Authentication
  curl -s -X POST http://$LISTEN/api/v1/coupons/1/issues -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{}'
  curl -s http://$LISTEN/api/v1/coupons/1
  curl -s -H "Authorization: Bearer \$TOKEN" http://$LISTEN/api/v1/coupons/1/issues/42
  curl -s http://$OPS/readyz   # operations: /metrics, /healthz, /readyz (ISSUER_OPS_LISTEN)

TXT
"$BIN/issuer-api"
