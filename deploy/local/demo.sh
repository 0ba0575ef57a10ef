#!/usr/bin/env bash
# The seed's experiment on this machine: start both services, create a coupon of 500, send
# 5,000 distinct users at once, and print the outcome beside the seed's numbers.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"
LOGS="$ROOT/.local/demo"
mkdir -p "$LOGS"
LISTEN=${ISSUER_LISTEN:-127.0.0.1:8080}

"$BIN/issuer-worker" >"$LOGS/worker.log" 2>&1 &
worker=$!
"$BIN/issuer-api" >"$LOGS/api.log" 2>&1 &
api=$!
stop() {
  kill -TERM "$api" "$worker" 2>/dev/null || true
  wait "$api" "$worker" 2>/dev/null || true
}
trap stop EXIT

"$BIN/issuer-bench" --api "http://$LISTEN" seed "$@"
echo "(service logs in .local/demo)"
