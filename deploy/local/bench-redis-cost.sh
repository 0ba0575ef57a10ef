#!/usr/bin/env bash
# Redis's time per admitted request (issue 26, acceptance 4), under the ceiling's load: 100
# coupons, every request admitted, like for like (users by the gateway header, no rate limit,
# no worker: the admission and the settle are the API's), on the one node at 127.0.0.1:6379.
# Each run is a fresh issuer-api on its own key prefix and one `issuer-bench sustained`, which
# resets and reads the node's INFO commandstats. With BEFORE set to another issuer-api binary,
# each round runs it and this tree's (BIN) alternately, which goes first alternating too.
# Prints each run's script calls and µs per admitted request, then the medians.
#   cargo build --release -p issuer-api -p issuer-bench
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-"$ROOT/target/release"}
BEFORE=${BEFORE:-}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-40000}
CONCURRENCY=${CONCURRENCY:-100}
REDIS=${REDIS:-127.0.0.1:6379}
LISTEN=127.0.0.1:18094
OPS=127.0.0.1:18095
OUT="$ROOT/.local/bench-redis-cost"
mkdir -p "$OUT"
export ISSUER_ADMIN_TOKEN=${ISSUER_ADMIN_TOKEN:-dev-admin-token}
export ISSUER_DEV_SECRETS=${ISSUER_DEV_SECRETS:-allow}
export RUST_LOG=${RUST_LOG:-warn}
export ISSUER_USER_AUTH=gateway-header
export ISSUER_GATEWAY_SECRET=bench-gateway-secret-of-at-least-32-bytes
export ISSUER_RATE_PER_USER=0

log() { echo "[bench-redis-cost] $*" >&2; }

# shellcheck source=deploy/local/bench-services.sh
source "$ROOT/deploy/local/bench-services.sh"

# run BUILD API_BINARY ROUND: one measured run; prints "build script_calls script_usec admitted".
run() {
  local build=$1 binary=$2 round=$3 prefix="bench-redis-cost-$build-$round-$$:"
  ISSUER_LISTEN="$LISTEN" ISSUER_OPS_LISTEN="$OPS" REDIS_KEY_PREFIX="$prefix" \
    "$binary" >"$OUT/api-$build-$round.log" 2>&1 &
  api=$!
  for _ in $(seq 100); do
    curl -sf "http://$OPS/readyz" >/dev/null && break
    sleep 0.2
  done
  registry_complete REDIS_KEY_PREFIX="$prefix" REDIS_URL="redis://$REDIS"
  local report="$OUT/run-$build-$round.txt"
  "$BIN/issuer-bench" --api "http://$LISTEN" --ops "http://$OPS" sustained --coupons 100 \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" --quantity "$REQUESTS" \
    --redis-stats "$REDIS" >"$report"
  stop_services
  local admitted
  admitted=$(awk -F'|' '$2 ~ /^ SUCCESS $/ { print $3 + 0 }' "$report")
  awk -v b="$build" -v a="$admitted" '$1 ~ /:[0-9]+$/ { print b, $2, $3, a }' "$report"
}

median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

builds="after"
[ -n "$BEFORE" ] && builds="before after"
results="$OUT/results.txt"
: >"$results"
for round in $(seq "$ROUNDS"); do
  order=$builds
  [ $((round % 2)) -eq 0 ] && order=$(echo "$builds" | tr ' ' '\n' | tac | paste -sd' ')
  for build in $order; do
    binary="$BIN/issuer-api"
    [ "$build" = before ] && binary=$BEFORE
    line=$(run "$build" "$binary" "$round")
    log "round $round: $line ($(echo "$line" | awk '{ printf "%.2f script µs per admitted", $3 / $4 }'))"
    echo "$line" >>"$results"
  done
done

echo
echo "| build | script calls per admitted (median) | script µs per admitted (median) | per run |"
echo "|---|---:|---:|---|"
for build in $builds; do
  rows=$(awk -v b="$build" '$1 == b' "$results")
  per=$(echo "$rows" | awk '{ printf "%.2f\n", $3 / $4 }')
  echo "| $build | $(echo "$rows" | awk '{ printf "%.3f\n", $2 / $4 }' | median) | $(echo "$per" | median) | $(echo "$per" | paste -sd, -) |"
done
