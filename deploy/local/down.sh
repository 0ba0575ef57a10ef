#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (and nothing it merely reused). Data stays in .local.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE="$ROOT/.local"
STARTED="$STATE/started"
[ -f "$STARTED" ] || { echo "[down] nothing was started by make up"; exit 0; }

stop_pid() { # stop_pid PIDFILE NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "[down] stopped $2"
  fi
  rm -f "$1"
}

while read -r service version; do
  case "$service" in
    kafka) bash "$ROOT/deploy/kafka/kafka.sh" stop "$STATE/kafka" && echo "[down] stopped Apache Kafka" ;;
    redis) stop_pid "$STATE/redis/redis.pid" Redis ;;
    redis-cluster) bash "$ROOT/deploy/redis/cluster.sh" stop "$STATE/redis-cluster" && echo "[down] stopped the Redis Cluster" ;;
    redis-cluster-test) bash "$ROOT/deploy/redis/cluster.sh" stop "$STATE/redis-cluster-test" && echo "[down] stopped the test suite's Redis Cluster" ;;
    redis-sentinel) bash "$ROOT/deploy/redis/sentinel.sh" stop "$STATE/redis-sentinel" && echo "[down] stopped Redis and its Sentinels" ;;
    postgresql)
      if [ "$(id -u)" -eq 0 ]; then pg_ctlcluster --skip-systemctl-redirect "$version" main stop
      else sudo pg_ctlcluster --skip-systemctl-redirect "$version" main stop; fi
      echo "[down] stopped PostgreSQL $version" ;;
  esac
done <"$STARTED"
rm -f "$STARTED"
