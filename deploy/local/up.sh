#!/usr/bin/env bash
# Brings up Redis, PostgreSQL and Apache Kafka on their standard local ports.
# A service that already answers is reused; a missing one is installed (Debian packages
# for Redis, PostgreSQL, Java and Maven; Apache Kafka's jars from Maven Central through
# deploy/kafka/kafka.sh) and started, and noted in .local/started so that `make down`
# stops only what this script started. Idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE="$ROOT/.local"
STARTED="$STATE/started"
mkdir -p "$STATE"
touch "$STARTED"

REDIS_PORT=${REDIS_PORT:-6379}
PG_PORT=${PG_PORT:-5432}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
DB_NAME=${DB_NAME:-coupon_issuance}
DB_USER=${DB_USER:-coupon}
DB_PASSWORD=${DB_PASSWORD:-coupon}

TAG=up
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

# --- Build tools ------------------------------------------------------------------------
# librdkafka is built with TLS (and SASL's SCRAM, which needs it) against the system's
# OpenSSL: its headers, and pkg-config to find them.
if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
  apt_install pkg-config libssl-dev
fi

# --- Redis ------------------------------------------------------------------------------
redis_ping() {
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 &&
    IFS= read -r -t 2 line <&3 && [[ $line == +PONG* ]]) 2>/dev/null
}

# Debian's Sentinel, for the replicated topology the tests, the chaos suite and
# REDIS_MODE=sentinel start (deploy/redis/sentinel.sh): installed here, once, so that tests
# starting topologies in parallel never race to install it. The package starts a Sentinel
# of its own, with Debian's configuration: ours replace it.
if ! command -v redis-sentinel >/dev/null; then
  apt_install redis-sentinel
  as_root service redis-sentinel stop >/dev/null 2>&1 || true
fi

# REDIS_MODE=sentinel: a primary on REDIS_PORT, replicas on the next two ports, Sentinels on
# 26379 to 26381 (deploy/redis/sentinel.sh), instead of the single node.
# REDIS_MODE=cluster: a Redis Cluster of three primaries and three replicas on 7001 to 7006
# (deploy/redis/cluster.sh), instead of the single node.
REDIS_MODE=${REDIS_MODE:-single}
if [ "$REDIS_MODE" = cluster ]; then
  bash "$ROOT/deploy/redis/cluster.sh" start "$STATE/redis-cluster" 7001,7002,7003,7004,7005,7006
  grep -qx redis-cluster "$STARTED" || echo redis-cluster >>"$STARTED"
  log "Redis Cluster: REDIS_CLUSTER_NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 (the client learns the rest)"
elif redis_ping; then
  log "Redis answers on $REDIS_PORT: reusing it"
elif [ "$REDIS_MODE" = sentinel ]; then
  bash "$ROOT/deploy/redis/sentinel.sh" start "$STATE/redis-sentinel" \
    "$REDIS_PORT,$((REDIS_PORT + 1)),$((REDIS_PORT + 2))" 26379,26380,26381
  grep -qx redis-sentinel "$STARTED" || echo redis-sentinel >>"$STARTED"
  log "Redis under Sentinel: REDIS_SENTINELS=127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381 (every yes waits for every replica they know)"
else
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
    # Where the package's own service started (with Debian's configuration, not ours), it
    # gives way to ours.
    as_root service redis-server stop >/dev/null 2>&1 || true
  fi
  mkdir -p "$STATE/redis"
  # deploy/redis/redis.conf: its persistence and memory settings, explained there.
  redis-server "$ROOT/deploy/redis/redis.conf" --daemonize yes --bind 127.0.0.1 \
    --port "$REDIS_PORT" --dir "$STATE/redis" \
    --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log"
  wait_for 10 Redis redis_ping
  grep -qx redis "$STARTED" || echo redis >>"$STARTED"
  log "Redis started on $REDIS_PORT (data in .local/redis)"
fi

# --- PostgreSQL -------------------------------------------------------------------------
if port_open "$PG_PORT"; then
  log "PostgreSQL answers on $PG_PORT: reusing it"
elif command -v pg_ctlcluster >/dev/null || apt_install postgresql; port_open "$PG_PORT"; then
  log "PostgreSQL answers on $PG_PORT after installing: reusing it"
else
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  [ -n "$version" ] || die "no PostgreSQL server found under /usr/lib/postgresql"
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    as_root pg_createcluster "$version" main -p "$PG_PORT" >/dev/null
  fi
  # The package may have created the cluster on another port; ours is the one on $PG_PORT.
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1 ||
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for 30 PostgreSQL port_open "$PG_PORT"
  grep -qx "postgresql $version" "$STARTED" || echo "postgresql $version" >>"$STARTED"
  log "PostgreSQL $version started on $PG_PORT"
fi

command -v psql >/dev/null || apt_install postgresql-client
# As the postgres superuser: over the local socket where we can become that user (a stock
# Debian install allows only that), else over TCP (machines set up with trust auth).
psql_admin() {
  if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 && runuser -u postgres -- psql -p "$PG_PORT" -c 'SELECT 1' >/dev/null 2>&1; then
    runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"
  else
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"
  fi
}
psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD' CREATEDB;
  END IF; END \$\$;" >/dev/null
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
  log "created database $DB_NAME"
fi

# --- Apache Kafka ------------------------------------------------------------------------
if port_open "$KAFKA_PORT"; then
  log "a broker answers on $KAFKA_PORT: reusing it"
else
  # One node, broker and controller (KRaft), data and log in .local/kafka; the first run
  # fetches the jars with Maven into .local/kafka-<version>.
  bash "$ROOT/deploy/kafka/kafka.sh" start "$STATE/kafka" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
  grep -qx kafka "$STARTED" || echo kafka >>"$STARTED"
  log "Apache Kafka $(bash "$ROOT/deploy/kafka/kafka.sh" version) started on $KAFKA_PORT (data and log in .local/kafka)"
fi

# --- Prometheus (tools only) -------------------------------------------------------------
# Not a service of the stack: the tests run the server against the services they start
# (tests/prometheus.rs), and promtool checks the alert rules. Debian's package starts its
# own server on :9090 when installed; that one is stopped.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install --no-install-recommends prometheus
  as_root service prometheus stop >/dev/null 2>&1 || true
  as_root service prometheus-node-exporter stop >/dev/null 2>&1 || true
fi

# --- Chromium and its WebDriver (tools only) ----------------------------------------------
# The console's browser tests (crates/issuer-api/tests/console.rs) drive Debian's chromium
# headless through chromium-driver; nothing else uses them.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install --no-install-recommends chromium chromium-driver fonts-dejavu-core
fi

log "ready: redis://127.0.0.1:$REDIS_PORT  postgres://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME  kafka 127.0.0.1:$KAFKA_PORT"
