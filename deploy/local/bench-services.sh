# Sourced by the bench scripts that start their own issuer-api and issuer-worker per run
# (bench-cluster.sh, bench-buckets.sh). Expects BIN (the binaries), LISTEN and OPS (the
# API's listeners), CLUSTER_SEED (a cluster node) and OUT (where logs go).

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
  for _ in $(seq 100); do
    curl -sf "http://$OPS/readyz" >/dev/null && return 0
    sleep 0.2
  done
  echo "issuer-api not ready: see $OUT/api-$name.log" >&2
  exit 1
}
