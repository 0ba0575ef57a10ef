#!/usr/bin/env bash
# One hot coupon on a Redis Cluster through the running services, in 1 bucket and in K
# (`make bench-buckets`): for each round, alternating which goes first, a fresh issuer-api
# and issuer-worker (Kafka mode, shipped defaults) serve one coupon under `issuer-bench
# sustained --coupons 1`, which resets and reads every primary's INFO commandstats. Prints
# each run's table: each primary's script calls and µs, and Redis µs per answered request.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-"$ROOT/target/release"}
ROUNDS=${ROUNDS:-3}
BUCKETS=${BUCKETS:-3}
REQUESTS=${REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-128}
LISTEN=127.0.0.1:18092
OPS=127.0.0.1:18093
CLUSTER_SEED=${CLUSTER_SEED:-127.0.0.1:7001}
OUT="$ROOT/.local/bench-buckets"
mkdir -p "$OUT"

log() { echo "[bench-buckets] $*" >&2; }

# shellcheck source=deploy/local/bench-services.sh
source "$ROOT/deploy/local/bench-services.sh"

# run BUCKETS ROUND: one measured run, its report in $OUT.
run() {
  local buckets=$1 round=$2
  local prefix="bench-buckets-$round-$buckets-$$:"
  start_services "$round-$buckets" REDIS_CLUSTER_NODES="$CLUSTER_SEED" REDIS_KEY_PREFIX="$prefix"
  local report="$OUT/run-$round-$buckets.txt"
  BENCH_API="http://$LISTEN" BENCH_OPS="http://$OPS" "$BIN/issuer-bench" sustained --coupons 1 \
    --buckets "$buckets" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
    --quantity "$REQUESTS" --redis-stats "$(primaries)" >"$report"
  stop_services
  log "round $round, $buckets bucket(s): $report"
  sed -n '/^node /,/^spread/p' "$report"
}

for round in $(seq "$ROUNDS"); do
  order="1 $BUCKETS"
  [ $((round % 2)) -eq 0 ] && order="$BUCKETS 1"
  for buckets in $order; do
    echo "round $round, $buckets bucket(s)"
    run "$buckets" "$round"
  done
done
