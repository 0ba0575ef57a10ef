#!/usr/bin/env bash
# What each admitted request costs (issue 26, acceptances 2 and 4), the product beside the
# hand-built ceiling under the same load: Redis's time (`INFO commandstats`) and each
# server's CPU (utime and stime from /proc), per admitted request, and the req/s ratio.
# `issuer-bench ceiling --shape admitted`, 100 coupons, every request admitted, product and
# ceiling alternating within each run. Like for like (users by the gateway header, no rate
# limit, no worker: the admission and the settle are the API's). Each side has a Redis of
# its own, both from deploy/redis/redis.conf (the shipped `appendfsync always`), so each
# one's INFO commandstats counts only its side: the product on `make up`'s (127.0.0.1:6379),
# the ceiling on one this script starts. Redis's accounting counts the time a command was
# descheduled too, and here Redis shares two cores with both servers, Kafka and the load:
# only figures of one run compare. The ceiling's CPU is read over the whole run, and it is
# idle while the product is measured.
# Each run is a fresh issuer-api (its own database and key prefix). With BEFORE set to
# another issuer-api binary, each round runs it and this tree's (BIN) in turn, which goes
# first alternating. Prints each run, then the medians. Needs `make up`, the release builds
# and the ceiling (deploy/local/bench-ceiling.sh says how to build them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-"$ROOT/target/release"}
CEILING=${CEILING:-$ROOT/.local/ceiling-target/release/ceiling}
BEFORE=${BEFORE:-}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-40000}
CONNECTIONS=${CONNECTIONS:-100}
REDIS=127.0.0.1:6379
CEILING_REDIS_PORT=6390
LISTEN=127.0.0.1:18094
OPS=127.0.0.1:18095
CEILING_LISTEN=127.0.0.1:18082
OUT="$ROOT/.local/bench-redis-cost"
mkdir -p "$OUT"
export ISSUER_USER_AUTH=gateway-header
export ISSUER_GATEWAY_SECRET=bench-gateway-secret-of-at-least-32-bytes
export ISSUER_RATE_PER_USER=0

log() { echo "[bench-redis-cost] $*" >&2; }

# shellcheck source=deploy/local/bench-services.sh
source "$ROOT/deploy/local/bench-services.sh"

rm -rf "$OUT/ceiling-redis" && mkdir -p "$OUT/ceiling-redis"
redis-server "$ROOT/deploy/redis/redis.conf" --daemonize yes --bind 127.0.0.1 \
  --port "$CEILING_REDIS_PORT" --dir "$OUT/ceiling-redis" \
  --pidfile "$OUT/ceiling-redis/redis.pid" --logfile "$OUT/ceiling-redis/redis.log"
for _ in $(seq 50); do
  redis-cli -p "$CEILING_REDIS_PORT" PING >/dev/null 2>&1 && break
  sleep 0.1
done
start_ceiling_topic
start_ceiling "redis://127.0.0.1:$CEILING_REDIS_PORT/9" 500
trap 'stop_services; kill -TERM $ceiling 2>/dev/null || true; redis-cli -p $CEILING_REDIS_PORT SHUTDOWN NOSAVE >/dev/null 2>&1 || true' EXIT

# scripts PORT: "calls µs" of every script and function run on that Redis since its reset.
scripts() {
  redis-cli -p "$1" INFO commandstats |
    awk -F'[:=,]' '/^cmdstat_(fcall|fcall_ro|evalsha|eval):/ { calls += $3; usec += $5 } END { print calls + 0, usec + 0 }'
}

# cpu PID: the process's CPU time so far, in clock ticks (utime + stime).
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run BUILD API_BINARY ROUND: one measured run; prints "build product_calls product_usec
# ceiling_calls ceiling_usec admitted product_rps ceiling_rps product_cpu_us ceiling_cpu_us".
run() {
  local build=$1 binary=$2 round=$3
  fresh_database "$build-$round"
  start_api "$build-$round" "$binary" REDIS_KEY_PREFIX="bench-redis-cost-$build-$round-$$:" \
    REDIS_URL="redis://$REDIS" DATABASE_URL="$database_url"
  redis-cli -p "${REDIS#*:}" CONFIG RESETSTAT >/dev/null
  redis-cli -p "$CEILING_REDIS_PORT" CONFIG RESETSTAT >/dev/null
  local report="$OUT/run-$build-$round.json"
  local api_cpu ceiling_cpu
  api_cpu=$(cpu "$api")
  ceiling_cpu=$(cpu "$ceiling")
  "$BIN/issuer-bench" --api "http://$LISTEN" --ops "http://$OPS" --json ceiling \
    --ceiling "http://$CEILING_LISTEN" --ceiling-quantity 500 --shape admitted \
    --connections "$CONNECTIONS" --rounds 1 --requests "$REQUESTS" >"$report"
  api_cpu=$((($(cpu "$api") - api_cpu) * TICK_US))
  ceiling_cpu=$((($(cpu "$ceiling") - ceiling_cpu) * TICK_US))
  local product ceiling_side
  product=$(scripts "${REDIS#*:}")
  ceiling_side=$(scripts "$CEILING_REDIS_PORT")
  stop_services
  echo "$build $product $ceiling_side $REQUESTS $(rps_of "$report") $api_cpu $ceiling_cpu"
}

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
    log "round $round: $line ($(echo "$line" | awk '{ printf "per admitted: script µs product %.2f, ceiling %.2f; CPU µs API %.1f, ceiling %.1f", $3 / $6, $5 / $6, $9 / $6, $10 / $6 }'))"
    echo "$line" >>"$results"
  done
done

# med BUILD FORMAT EXPR: the median, over BUILD's runs, of the awk expression EXPR of a run's
# fields (as `run` prints them), each formatted with FORMAT.
med() { awk -v b="$1" '$1 == b { printf "'"$2"'\n", '"$3"' }' "$results" | median; }
# each BUILD FORMAT EXPRS: every run of BUILD, EXPRS formatted with FORMAT, on one line.
each() { awk -v b="$1" '$1 == b { printf "'"$2"'\n", '"$3"' }' "$results" | paste -sd' ' -; }

echo
echo "| build | product script µs per admitted | ceiling script µs per admitted | product / ceiling | per run (product, ceiling) |"
echo "|---|---:|---:|---:|---|"
for build in $builds; do
  echo "| $build | $(med "$build" %.2f '$3 / $6') | $(med "$build" %.2f '$5 / $6') | $(med "$build" %.2f '$3 / $5') | $(each "$build" %.1f/%.1f '$3 / $6, $5 / $6') |"
done
echo
echo "| build | API CPU µs per request | ceiling CPU µs per request | req/s product / ceiling | per run (API CPU, ratio) |"
echo "|---|---:|---:|---:|---|"
for build in $builds; do
  echo "| $build | $(med "$build" %.1f '$9 / $6') | $(med "$build" %.1f '$10 / $6') | $(med "$build" %.3f '$7 / $8') | $(each "$build" %.0f/%.2f '$9 / $6, $7 / $8') |"
done
