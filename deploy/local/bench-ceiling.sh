#!/usr/bin/env bash
# The product against the hand-built ceiling (`../shared/tools/ceiling`), every request sold
# out (SHAPE=sold-out, the default) or admitted (SHAPE=admitted), with the finished gate off
# (ISSUER_FINISHED_GATE_MS=0) and on (the default; GATES picks), in the SETTINGS named: as
# shipped (users by JWT, the per-user rate limit, a worker running), like for like (users by
# the gateway header, no rate limit, no worker: the ceiling's work plus the protocol's), and
# like for like with one of the three added (jwt, rate-limit, worker), each one's cost apart.
# Each run is a fresh issuer-api (and worker) and one `issuer-bench ceiling` round, which
# alternates product and ceiling itself; the gate's two settings alternate too.
# Prints each run, then the medians. Needs `make up`, the release builds and the ceiling:
#   cargo build --release -p issuer-api -p issuer-worker -p issuer-bench
#   CARGO_TARGET_DIR=.local/ceiling-target cargo build --release \
#     --manifest-path ../shared/tools/ceiling/Cargo.toml
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"
CEILING=${CEILING:-$ROOT/.local/ceiling-target/release/ceiling}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-40000}
CONNECTIONS=${CONNECTIONS:-100 400}
SETTINGS=${SETTINGS:-shipped like-for-like}
SHAPE=${SHAPE:-sold-out}
GATES=${GATES:-0 500}
# Units per coupon on the ceiling's side: one sells out at once, 500 admits every request
# of a run (issuer-bench spreads REQUESTS over 100 coupons).
case "$SHAPE" in
  sold-out) CEILING_QTY=1 ;;
  admitted) CEILING_QTY=500 ;;
  *)
    echo "SHAPE is sold-out or admitted, not $SHAPE" >&2
    exit 2
    ;;
esac
LISTEN=127.0.0.1:18090
OPS=127.0.0.1:18091
CEILING_LISTEN=127.0.0.1:18080
OUT="$ROOT/.local/bench-ceiling"
mkdir -p "$OUT"
GATEWAY_SECRET=bench-gateway-secret-of-at-least-32-bytes

log() { echo "[bench-ceiling] $*" >&2; }

# shellcheck source=deploy/local/bench-services.sh
source "$ROOT/deploy/local/bench-services.sh"

[ "$SHAPE" = admitted ] && start_ceiling_topic
start_ceiling redis://127.0.0.1:6379/9 "$CEILING_QTY"
trap 'stop_services; kill -TERM $ceiling 2>/dev/null || true' EXIT

# run SETTING GATE_MS CONNECTIONS ROUND: one measured run; prints
# "setting gate connections product_rps ceiling_rps".
run() {
  local setting=$1 gate=$2 connections=$3 round=$4 name="$1-$2-$3-$4"
  local env=(ISSUER_FINISHED_GATE_MS="$gate" REDIS_KEY_PREFIX="bench-ceiling-$name-$$:")
  local bench=(env)
  # Like for like, but for the one of the three the setting names (as shipped: all three).
  if [ "$setting" != shipped ] && [ "$setting" != jwt ]; then
    env+=(ISSUER_USER_AUTH=gateway-header ISSUER_GATEWAY_SECRET="$GATEWAY_SECRET")
    bench=(env ISSUER_USER_AUTH=gateway-header ISSUER_GATEWAY_SECRET="$GATEWAY_SECRET")
  fi
  if [ "$setting" != shipped ] && [ "$setting" != rate-limit ]; then
    env+=(ISSUER_RATE_PER_USER=0)
  fi
  start_services "$name" "${env[@]}"
  # No worker beside the ceiling's like: it has none.
  if [ "$setting" != shipped ] && [ "$setting" != worker ]; then
    kill -TERM "$worker" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
    worker=""
  fi
  local report="$OUT/run-$name.json"
  "${bench[@]}" "$BIN/issuer-bench" --api "http://$LISTEN" --ops "http://$OPS" --json ceiling \
    --ceiling "http://$CEILING_LISTEN" --ceiling-quantity "$CEILING_QTY" --shape "$SHAPE" \
    --connections "$connections" --rounds 1 --requests "$REQUESTS" >"$report"
  stop_services
  echo "$setting $gate $connections $(rps_of "$report")"
}

results="$OUT/results.txt"
: >"$results"
for round in $(seq "$ROUNDS"); do
  for setting in $SETTINGS; do
    for connections in $CONNECTIONS; do
      # Alternating which goes first, so neither always meets a warmer machine.
      order=$GATES
      [ $((round % 2)) -eq 0 ] && order=$(echo "$GATES" | tr ' ' '\n' | tac | paste -sd' ')
      for gate in $order; do
        line=$(run "$setting" "$gate" "$connections" "$round")
        log "round $round: $line"
        echo "$line" >>"$results"
      done
    done
  done
done

echo
echo "| setting | gate | connections | product req/s (median) | ceiling req/s (median) | ratio (median of runs) | ratios per run |"
echo "|---|---|---:|---:|---:|---:|---|"
for setting in $SETTINGS; do
  for connections in $CONNECTIONS; do
    for gate in $GATES; do
      rows=$(awk -v s="$setting" -v g="$gate" -v c="$connections" '$1 == s && $2 == g && $3 == c' "$results")
      ratios=$(echo "$rows" | awk '{ printf "%.2f\n", $4 / $5 }')
      echo "| $setting | ${gate} ms | $connections | $(echo "$rows" | awk '{print $4}' | median | xargs printf "%.0f") | $(echo "$rows" | awk '{print $5}' | median | xargs printf "%.0f") | $(echo "$ratios" | median) | $(echo "$ratios" | paste -sd, -) |"
    done
  done
done
