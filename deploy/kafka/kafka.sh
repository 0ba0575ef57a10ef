#!/usr/bin/env bash
# The one place that runs Apache Kafka on this machine: `make up`'s broker, the tests'
# clusters, the chaos suite's and the benchmarks' all come from here.
#
#   kafka.sh jars                          fetch the broker's jars (Maven), print their folder
#   kafka.sh start DIR PORTS CTRL_PORTS    start a KRaft cluster, one node per port
#                                          (comma lists of equal length; 1 or 3 nodes)
#   kafka.sh start-node DIR ID             start node ID of DIR's cluster again
#   kafka.sh kill DIR ID                   kill -9 node ID
#   kafka.sh stop DIR                      stop every node of DIR (SIGTERM, then SIGKILL)
#
# Every node is broker and controller at once (combined mode), on 127.0.0.1. DIR holds a
# folder per node: server.properties, data/, node.log, pid. The version is pinned in
# deploy/kafka/pom.xml and nowhere else.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")
# Where the jars go; a test points it at a folder of its own.
LIB=${KAFKA_LIB_DIR:-$ROOT/.local/kafka-$VERSION/lib}
# Bounded, and small enough that three nodes, PostgreSQL, Redis and the services share the
# machine: a broker for a test or a flash sale of this size needs far less than the 1 GiB
# default.
HEAP=${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}

TAG=kafka
# shellcheck source=deploy/lib.sh
. "$HERE/../lib.sh"

jars() {
  if [ -f "$LIB/.complete" ]; then return 0; fi
  # Tests start clusters in parallel: one fetch at a time, and the others find it done
  # (two at once deleted each other's files).
  mkdir -p "$(dirname "$LIB")"
  exec {lock}>"$LIB.lock"
  flock "$lock"
  if [ ! -f "$LIB/.complete" ]; then
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null || apt_install maven
    log "fetching Apache Kafka $VERSION and its runtime dependencies with Maven (one-off)"
    rm -rf "$LIB"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB" >&2
    touch "$LIB/.complete"
  fi
  exec {lock}>&-
}

java_run() { # java_run NODE_DIR MAIN_CLASS ARGS...
  local node=$1 main=$2
  shift 2
  # shellcheck disable=SC2086 # HEAP is a list of JVM options
  exec java $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -Dkafka.log.file="$node/node.log" \
    -cp "$LIB/*" "$main" "$@"
}

write_config() { # write_config NODE_DIR ID PORT CTRL_PORT VOTERS REPLICAS
  local node=$1 id=$2 port=$3 ctrl=$4 voters=$5 replicas=$6
  local min_isr=$((replicas > 1 ? 2 : 1))
  cat >"$node/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$node/data
# The product creates its topics with the partitions and replication it is configured for.
auto.create.topics.enable=false
# Internal topics replicated like the product's own: the group's committed offsets must
# survive the loss of a broker as the events do.
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
unclean.leader.election.enable=false
# A test's or a sale's first consumer starts at once, not after 3 s.
group.initial.rebalance.delay.ms=0
# A killed broker is fenced, and its partitions led elsewhere, after this long without a
# heartbeat (default 9 s). Failover time is mostly this, and the failover test measures it;
# at 3 s, a live broker's heartbeat timed out here while a build loaded both cores.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
EOF
  # Settings of the caller's (more listeners, TLS, SASL), after ours: a key given twice
  # takes its last value.
  if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then cat "$KAFKA_EXTRA_PROPERTIES" >>"$node/server.properties"; fi
}

node_pid() { cat "$1/node-$2/pid" 2>/dev/null || true; }
node_alive() { local pid; pid=$(node_pid "$1" "$2"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

start_node() { # start_node DIR ID
  local dir=$1 id=$2 node="$1/node-$2"
  [ -f "$node/server.properties" ] || die "no node $id in $dir"
  if node_alive "$dir" "$id"; then return 0; fi
  (java_run "$node" kafka.Kafka "$node/server.properties" >>"$node/node.log" 2>&1 </dev/null &
    echo $! >"$node/pid")
}

start() { # start DIR PORTS CTRL_PORTS
  local dir=$1 ports ctrls voters="" id n
  IFS=, read -r -a ports <<<"$2"
  IFS=, read -r -a ctrls <<<"$3"
  n=${#ports[@]}
  [ "$n" -eq "${#ctrls[@]}" ] || die "as many controller ports as broker ports, please"
  jars
  mkdir -p "$dir"
  for ((id = 1; id <= n; id++)); do
    voters+="${voters:+,}$id@127.0.0.1:${ctrls[id - 1]}"
  done
  [ -f "$dir/cluster.id" ] ||
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$dir/cluster.id"
  local pids=()
  for ((id = 1; id <= n; id++)); do
    local node="$dir/node-$id"
    mkdir -p "$node"
    write_config "$node" "$id" "${ports[id - 1]}" "${ctrls[id - 1]}" "$voters" "$n"
    if [ ! -f "$node/data/meta.properties" ]; then
      # --cluster-id=: a random id may begin with '-', which a separate argument would
      # turn into an option.
      # KAFKA_FORMAT_ARGS: more for the format, e.g. SCRAM users (--add-scram ...).
      local extra=()
      if [ -n "${KAFKA_FORMAT_ARGS:-}" ]; then read -r -a extra <<<"$KAFKA_FORMAT_ARGS"; fi
      (java_run "$node" kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id="$(cat "$dir/cluster.id")" --config="$node/server.properties" \
        "${extra[@]}" >>"$node/node.log" 2>&1) &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { tail -n 20 "$dir"/node-*/node.log >&2; die "formatting the storage failed"; }
  done
  for ((id = 1; id <= n; id++)); do start_node "$dir" "$id"; done
  for port in "${ports[@]}"; do
    wait_for 90 "a broker on $port (logs: node.log in each node folder)" port_open "$port"
  done
}

kill_node() { # kill_node DIR ID
  local pid
  pid=$(node_pid "$1" "$2")
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1/node-$2/pid"
}

stop() { # stop DIR
  local dir=$1 node id pid
  for node in "$dir"/node-*; do
    [ -d "$node" ] || continue
    id=${node##*-}
    pid=$(node_pid "$dir" "$id")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || continue
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill_node "$dir" "$id"
  done
}

case "${1:-}" in
  jars) jars; echo "$LIB" ;;
  version) echo "$VERSION" ;;
  start) [ $# -eq 4 ] || die "usage: kafka.sh start DIR PORTS CTRL_PORTS"; start "$2" "$3" "$4" ;;
  start-node) [ $# -eq 3 ] || die "usage: kafka.sh start-node DIR ID"; start_node "$2" "$3" ;;
  kill) [ $# -eq 3 ] || die "usage: kafka.sh kill DIR ID"; kill_node "$2" "$3" ;;
  stop) [ $# -eq 2 ] || die "usage: kafka.sh stop DIR"; stop "$2" ;;
  *) die "usage: kafka.sh jars|version|start|start-node|kill|stop (see the top of this file)" ;;
esac
