#!/usr/bin/env bash
# Property-based fuzz of the running API against its OpenAPI document (schemathesis from
# PyPI): an issuer-api and an issuer-worker (debug builds) on a database, topic and Redis
# prefix of their own, for FUZZ_SECONDS. Fails on any 5xx, any answer the document does
# not describe, and any invalid input that is not refused with a 4xx.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_BUDGET=${FUZZ_SECONDS:-120}
PORT=${FUZZ_PORT:-18080}
VENV="$ROOT/.local/venv"
SCHEMATHESIS_VERSION=4.32.5

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

base=${DATABASE_URL:-postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance}
psql "$base" -qc "DROP DATABASE IF EXISTS coupon_fuzz WITH (FORCE)" -c "CREATE DATABASE coupon_fuzz" >/dev/null
export DATABASE_URL=${base%/*}/coupon_fuzz
export ISSUER_LISTEN=127.0.0.1:$PORT ISSUE_TOPIC=coupon-issue-fuzz WORKER_GROUP_ID=coupon-fuzz-worker
export REDIS_KEY_PREFIX="fuzz-$$:" RUST_LOG=warn
# What `make` exports, for a run of this script on its own.
export ISSUER_ADMIN_TOKEN=${ISSUER_ADMIN_TOKEN:-fuzz-admin-token}
export ISSUER_JWT_SECRET=${ISSUER_JWT_SECRET:-fuzz-only-hs256-secret-of-32-bytes-or-more}
export ISSUER_DEV_SECRETS=allow
export ISSUER_JWT_ISSUER=${ISSUER_JWT_ISSUER:-coupon-issuance-dev}
export ISSUER_JWT_AUDIENCE=${ISSUER_JWT_AUDIENCE:-coupon-api}
# The document names the operations routes too: fuzz them on the same listener.
export ISSUER_OPS_LISTEN=public
# Many generated requests fail authentication on purpose, all from this one address: the
# throttle would answer the rest 429 (documented) and leave the routes little tried.
export ISSUER_AUTH_FAILURES_PER_ADDRESS=1000000
# Generated requests come from one user: a per-user limit of 10/s would answer most of them
# 429 (documented, but it would leave the issue path itself little tried).
export ISSUER_RATE_PER_USER=1000
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "contract-fuzz: something already listens on 127.0.0.1:$PORT; set FUZZ_PORT" >&2
  exit 1
fi
logs="$ROOT/.local/contract-fuzz"
mkdir -p "$logs"
"$ROOT/target/debug/issuer-worker" >"$logs/worker.log" 2>&1 &
worker=$!
"$ROOT/target/debug/issuer-api" >"$logs/api.log" 2>&1 &
api=$!
trap 'kill -TERM $api $worker 2>/dev/null; wait $api $worker 2>/dev/null || true' EXIT
# Fuzz only the API this script started, once it is ready.
for _ in $(seq 300); do
  kill -0 "$api" 2>/dev/null || { echo "contract-fuzz: issuer-api exited (see $logs/api.log)" >&2; exit 1; }
  curl -sf "http://$ISSUER_LISTEN/readyz" >/dev/null && break
  sleep 0.2
done

# User 1 with the admin role: every route is open to it, so the fuzz reaches past 401/403.
token=$("$ROOT/deploy/local/mint-token.sh" 1 coupon-admin)
"$VENV/bin/schemathesis" --config-file "$ROOT/deploy/local/schemathesis.toml" \
  run "http://$ISSUER_LISTEN/openapi.json" \
  --phases examples,fuzzing,stateful \
  --max-time "$SECONDS_BUDGET" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method \
  --header "Authorization: Bearer $token" \
  --workers 2 \
  --suppress-health-check all
