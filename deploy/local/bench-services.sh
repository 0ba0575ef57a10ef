# Sourced by the bench scripts that start their own issuer-api and issuer-worker per run
# (bench-cluster.sh, bench-buckets.sh, bench-ceiling.sh, bench-redis-cost.sh). Expects BIN
# (the binaries), LISTEN and OPS (the API's listeners), CLUSTER_SEED (a cluster node), OUT
# (where logs go), and for the hand-built ceiling CEILING (its binary) and CEILING_LISTEN.

# The bench's users: the same secrets as the API's (`make`'s development ones unless set).
export ISSUER_ADMIN_TOKEN=${ISSUER_ADMIN_TOKEN:-dev-admin-token}
export ISSUER_JWT_SECRET=${ISSUER_JWT_SECRET:-dev-only-hs256-secret-never-use-in-production}
export ISSUER_JWT_ISSUER=${ISSUER_JWT_ISSUER:-coupon-issuance-dev}
export ISSUER_JWT_AUDIENCE=${ISSUER_JWT_AUDIENCE:-coupon-api}
export ISSUER_DEV_SECRETS=${ISSUER_DEV_SECRETS:-allow}
export RUST_LOG=${RUST_LOG:-warn}

# The cluster's primaries now, for their commandstats.
primaries() {
  redis-cli -p "${CLUSTER_SEED#*:}" CLUSTER NODES |
    awk '$3 ~ /master/ && $3 !~ /fail/ { split($2, a, "@"); print a[1] }' | paste -sd, -
}

api=""
worker=""
database=""
stop_services() {
  for pid in $api $worker; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $api $worker; do wait "$pid" 2>/dev/null || true; done
  api=""
  worker=""
  if [ -n "$database" ]; then
    PGOPTIONS=--client-min-messages=warning psql "$POSTGRES" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    database=""
  fi
}
trap stop_services EXIT

# Each run's services get a database of their own, made here and dropped by stop_services:
# a run on the shared one found every coupon earlier runs left with stock (thousands),
# which the API registers at start under a fresh key prefix and its reconciler then reads
# on every pass, so each run measured more of them than the last.
POSTGRES=${DATABASE_URL:-postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance}
# fresh_database NAME: makes the run's database; its URL is then $database_url.
database_url=""
fresh_database() {
  database="coupon_bench_$$_$1"
  database=${database//[^a-zA-Z0-9_]/_}
  PGOPTIONS=--client-min-messages=warning psql "$POSTGRES" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
  PGOPTIONS=--client-min-messages=warning psql "$POSTGRES" -qc "CREATE DATABASE $database" >/dev/null
  database_url="${POSTGRES%/*}/$database"
}

# start_api NAME BINARY ENV...: an API (BINARY) with ENV (VAR=value words, DATABASE_URL
# among them: fresh_database's), its log $OUT/api-NAME.log; returns once it is ready and its
# registry complete.
start_api() {
  local name=$1 binary=$2
  shift 2
  env "$@" ISSUER_LISTEN="$LISTEN" ISSUER_OPS_LISTEN="$OPS" "$binary" \
    >"$OUT/api-$name.log" 2>&1 &
  api=$!
  local ready=""
  for _ in $(seq 100); do
    curl -sf "http://$OPS/readyz" >/dev/null && ready=yes && break
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    echo "issuer-api not ready: see $OUT/api-$name.log" >&2
    exit 1
  fi
  registry_complete "$@"
}

# start_services NAME ENV...: a worker and an API with ENV on a fresh database, their logs
# $OUT/worker-NAME.log and $OUT/api-NAME.log; returns once the API is ready.
start_services() {
  local name=$1
  shift
  fresh_database "$name"
  env "$@" DATABASE_URL="$database_url" "$BIN/issuer-worker" >"$OUT/worker-$name.log" 2>&1 &
  worker=$!
  start_api "$name" "$BIN/issuer-api" "$@" DATABASE_URL="$database_url"
}

# registry_complete ENV...: waits until the API started with ENV has completed the registry
# of coupons with work under its key prefix: a fresh prefix's registry is empty, so the API
# registers every coupon its database has with work, and a measurement begun before that
# ends would count those registrations as the load's.
registry_complete() {
  local prefix="" cli=(redis-cli -p 6379) word
  for word in "$@"; do
    case "$word" in
      REDIS_KEY_PREFIX=*) prefix=${word#REDIS_KEY_PREFIX=} ;;
      REDIS_URL=*) word=${word#*://} && word=${word%%/*} && cli=(redis-cli -h "${word%:*}" -p "${word##*:}") ;;
      REDIS_CLUSTER_NODES=*) word=${word#REDIS_CLUSTER_NODES=} && cli=(redis-cli -c -p "${word##*:}") ;;
    esac
  done
  for _ in $(seq 600); do
    [ -n "$("${cli[@]}" GET "${prefix}{coupons}:checked")" ] && return 0
    sleep 0.1
  done
  echo "the registry under '$prefix' was not completed in 60 s" >&2
  exit 1
}

# rps_of REPORT: "PRODUCT CEILING", the req/s of an `issuer-bench --json ceiling` report's
# one round.
rps_of() {
  local flat
  flat=$(tr -d ' \n' <"$1")
  echo "$(grep -o '"productRps":\[[0-9.]*' <<<"$flat" | grep -o '[0-9.]*$')" \
    "$(grep -o '"ceilingRps":\[[0-9.]*' <<<"$flat" | grep -o '[0-9.]*$')"
}

# The median of the numbers on standard input, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# start_ceiling REDIS_URL QTY: the hand-built ceiling ($CEILING) on $CEILING_LISTEN, its log
# $OUT/ceiling.log, producing to the topic `ceiling` (start_ceiling_topic); returns once it
# answers. Its pid is $ceiling, for the caller's exit trap.
ceiling=""
start_ceiling() {
  REDIS_URL=$1 KAFKA=127.0.0.1:9092 TOPIC=ceiling QTY=$2 LISTEN=$CEILING_LISTEN "$CEILING" \
    >"$OUT/ceiling.log" 2>&1 &
  ceiling=$!
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://$CEILING_LISTEN/" && return 0
    sleep 0.2
  done
}

# The ceiling's `/full` produces to its own topic, which the broker does not create on use
# (`auto.create.topics.enable=false`): an API started once on it creates it as it would its own.
start_ceiling_topic() {
  start_services ceiling-topic ISSUE_TOPIC=ceiling REDIS_KEY_PREFIX="bench-ceiling-topic-$$:"
  stop_services
}
