# Sourced by the bench scripts that start their own issuer-api and issuer-worker per run
# (bench-cluster.sh, bench-buckets.sh, bench-ceiling.sh, bench-redis-cost.sh). Expects BIN
# (the binaries), LISTEN and OPS (the API's listeners), CLUSTER_SEED (a cluster node) and
# OUT (where logs go).

# The cluster's primaries now, for their commandstats.
primaries() {
  redis-cli -p "${CLUSTER_SEED#*:}" CLUSTER NODES |
    awk '$3 ~ /master/ && $3 !~ /fail/ { split($2, a, "@"); print a[1] }' | paste -sd, -
}

api=""
worker=""
stop_services() {
  for pid in $api $worker; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $api $worker; do wait "$pid" 2>/dev/null || true; done
  api=""
  worker=""
}
trap stop_services EXIT

# start_services NAME ENV...: a worker and an API with ENV (VAR=value words), their logs
# $OUT/worker-NAME.log and $OUT/api-NAME.log; returns once the API is ready.
start_services() {
  local name=$1
  shift
  env "$@" "$BIN/issuer-worker" >"$OUT/worker-$name.log" 2>&1 &
  worker=$!
  env "$@" ISSUER_LISTEN="$LISTEN" ISSUER_OPS_LISTEN="$OPS" "$BIN/issuer-api" \
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

# registry_complete ENV...: waits until the API started with ENV has completed the registry
# of coupons with work under its key prefix. A fresh prefix's registry is empty, so the API
# registers every coupon PostgreSQL has with work, which grows by each run's coupons: a
# measurement begun before that ends counts thousands of registrations as the load's.
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
