#!/usr/bin/env bash
# One Redis node against a Redis Cluster, like for like and alternating (`make bench-cluster`):
# for each round, each shape (all admitted, sold out) runs once on `make up`'s node and once
# on `make up REDIS_MODE=cluster`'s cluster, each with a fresh issuer-api and issuer-worker
# (release builds, Kafka mode, the shipped defaults: rate limit on, users by JWT), under
# `issuer-bench sustained`, which resets and reads every primary's INFO commandstats. Prints
# each run, then the medians per shape and topology. Needs both started (`make bench-cluster`
# starts them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-20000}
COUPONS=${COUPONS:-100}
CONCURRENCY=${CONCURRENCY:-128}
LISTEN=127.0.0.1:18090
OPS=127.0.0.1:18091
SINGLE=127.0.0.1:${REDIS_PORT:-6379}
CLUSTER_SEED=127.0.0.1:7001
OUT="$ROOT/.local/bench-cluster"
mkdir -p "$OUT"

log() { echo "[bench-cluster] $*" >&2; }

# shellcheck source=deploy/local/bench-services.sh
source "$ROOT/deploy/local/bench-services.sh"

# run TOPOLOGY SHAPE ROUND: one measured run; prints "topology shape rps busiest_us all_us".
run() {
  local topology=$1 shape=$2 round=$3 redis_env stats quantity
  if [ "$topology" = single ]; then
    redis_env=(REDIS_URL="redis://$SINGLE")
    stats=$SINGLE
  else
    redis_env=(REDIS_CLUSTER_NODES="$CLUSTER_SEED")
    stats=$(primaries)
  fi
  quantity=1000000
  [ "$shape" = soldout ] && quantity=1
  local prefix="bench-$round-$topology-$shape-$$:"
  start_services "$round-$topology-$shape" "${redis_env[@]}" REDIS_KEY_PREFIX="$prefix"
  local report="$OUT/run-$round-$topology-$shape.txt"
  BENCH_API="http://$LISTEN" BENCH_OPS="http://$OPS" "$BIN/issuer-bench" --json sustained --coupons "$COUPONS" \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" --quantity "$quantity" \
    --redis-stats "$stats" >"$report"
  stop_services
  # The JSON report's rate, then the commandstats table: the busiest node's Redis µs per
  # answered request (its last column) and all nodes' together.
  local rps busiest all
  rps=$(grep -o '"rps": *[0-9.]*' "$report" | head -1 | grep -o '[0-9.]*$')
  busiest=$(awk '$1 ~ /^127\.0\.0\.1:/ { if ($NF > max) max = $NF } END { printf "%.1f", max }' "$report")
  all=$(grep -o 'all nodes: [0-9.]*' "$report" | grep -o '[0-9.]*$')
  echo "$topology $shape $rps $busiest $all"
}

median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

results="$OUT/results.txt"
: >"$results"
for round in $(seq "$ROUNDS"); do
  for shape in admitted soldout; do
    # Alternating which goes first, so neither always meets a warmer machine.
    order="single cluster"
    [ $((round % 2)) -eq 0 ] && order="cluster single"
    for topology in $order; do
      line=$(run "$topology" "$shape" "$round")
      log "round $round: $line"
      echo "$line" >>"$results"
    done
  done
done

echo
echo "| shape | topology | req/s (median of $ROUNDS) | Redis µs per request, busiest node | all nodes | runs (req/s) |"
echo "|---|---|---:|---:|---:|---|"
for shape in admitted soldout; do
  for topology in single cluster; do
    rows=$(awk -v t="$topology" -v s="$shape" '$1 == t && $2 == s' "$results")
    echo "| $shape | $topology | $(echo "$rows" | awk '{print $3}' | median | xargs printf "%.0f") | $(echo "$rows" | awk '{print $4}' | median) | $(echo "$rows" | awk '{print $5}' | median) | $(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $3}') |"
  done
done
