#!/usr/bin/env bash
# The one place that runs a Redis Cluster on this machine: the tests', the chaos suite's, the
# benchmarks' and `make up REDIS_MODE=cluster`'s all come from here.
#
#   cluster.sh start DIR PORTS        the nodes on PORTS (a comma list, six or more), made a
#                                     cluster of PORTS/2 primaries with one replica each
#   cluster.sh start-node DIR PORT    start the node on PORT again (it rejoins as it left)
#   cluster.sh add-replica DIR PORT PRIMARY
#                                     a new node on PORT, a further replica of the primary
#                                     on PRIMARY (two replicas a primary: README, "Redis
#                                     Cluster")
#   cluster.sh kill DIR PORT          kill -9 the node on PORT
#   cluster.sh pause DIR PORT         SIGSTOP the node on PORT (it answers nobody, the
#   cluster.sh resume DIR PORT        cluster bus included), SIGCONT it
#   cluster.sh stop DIR               stop every node of DIR
#
# Nodes run a copy of deploy/redis/redis.conf (the product's persistence: every write in the
# fsynced append-only file) with cluster.conf's lines, on 127.0.0.1, each in DIR/redis-PORT
# with its data, nodes.conf, log and pid. CLUSTER_MAXMEMORY (default 128mb) bounds each
# node: six of the single node's 512mb would be 3 GiB of a laptop for a test.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAXMEMORY=${CLUSTER_MAXMEMORY:-128mb}

TAG=cluster
# shellcheck source=deploy/lib.sh
. "$HERE/../lib.sh"

install() {
  command -v redis-server >/dev/null && return 0
  # Clusters started in parallel install once: the others wait here, then find it done.
  exec {lock}>/tmp/coupon-redis-install.lock
  flock "$lock"
  command -v redis-server >/dev/null && return 0
  apt_install redis-server
  # The package starts its own service, with Debian's configuration: ours replace it.
  as_root service redis-server stop >/dev/null 2>&1 || true
}

start_node() { # start_node DIR PORT
  local node="$1/redis-$2"
  mkdir -p "$node"
  running "$node" "$2" && return 0
  # A node's own copy: the cluster rewrites nodes.conf, never the repository's files.
  cat "$HERE/redis.conf" "$HERE/cluster.conf" >"$node/redis.conf"
  redis-server "$node/redis.conf" --port "$2" --bind 127.0.0.1 --dir "$node" \
    --maxmemory "$MAXMEMORY" --daemonize yes --pidfile "$node/pid" --logfile "$node/redis.log"
  wait_for 10 "Redis on $2 (logs under the cluster's folder)" port_open "$2"
}

cluster_ok() { # cluster_ok PORT...
  local port
  for port in "$@"; do
    redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

replicas_known() { # replicas_known PORT...
  local port
  for port in "$@"; do
    [ "$(redis-cli -p "$port" CLUSTER NODES 2>/dev/null | grep -c ' [^ ]*slave ')" -eq $(($# / 2)) ] || return 1
  done
}

start() { # start DIR PORTS
  local dir=$1 ports port
  IFS=, read -r -a ports <<<"$2"
  [ ${#ports[@]} -ge 6 ] && [ $((${#ports[@]} % 2)) -eq 0 ] ||
    die "an even number of ports, six or more (a replica per primary), please"
  install
  mkdir -p "$dir"
  for port in "${ports[@]}"; do start_node "$dir" "$port"; done
  if cluster_ok "${ports[@]}"; then
    log "the cluster on ${ports[*]} is up already: reusing it"
    return 0
  fi
  # Nodes started again from their nodes.conf (the machine restarted, the processes gone)
  # know their cluster: they need a moment of gossip, not a second create, which they refuse.
  if knows_a_cluster "${ports[0]}"; then
    wait_for 20 "the cluster on ${ports[*]}, started again, ok on every node" cluster_ok "${ports[@]}"
    log "the cluster on ${ports[*]} started again from its files: reusing it"
    return 0
  fi
  local addresses=()
  for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
  # All on one host: redis-cli warns that a replica shares its primary's host, which is
  # the point of a local cluster; --cluster-yes accepts its layout.
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    die "redis-cli --cluster create failed (see $dir/create.log)"
  wait_for 20 "the cluster's state ok on every node" cluster_ok "${ports[@]}"
  # Roles travel by gossip: until every node knows every replica as one, a replica asking
  # for votes (a failover) is refused by those that take it for a primary.
  wait_for 20 "every node knowing every replica" replicas_known "${ports[@]}"
  log "cluster of ${#ports[@]} nodes on 127.0.0.1: REDIS_CLUSTER_NODES=$(IFS=,; echo "${addresses[*]}")"
}

knows_a_cluster() { # knows_a_cluster PORT: the node lists others besides itself
  [ "$(redis-cli -p "$1" CLUSTER NODES 2>/dev/null | grep -c .)" -gt 1 ]
}

add_replica() { # add_replica DIR PORT PRIMARY
  start_node "$1" "$2"
  local id
  id=$(redis-cli -p "$3" CLUSTER MYID)
  redis-cli --cluster add-node "127.0.0.1:$2" "127.0.0.1:$3" --cluster-slave \
    --cluster-master-id "$id" >"$1/add-$2.log" 2>&1 ||
    die "redis-cli --cluster add-node failed (see $1/add-$2.log)"
  wait_for 20 "the new replica on $2 in sync with $3" replica_synced "$2"
  # The services count each shard's replicas from CLUSTER NODES, which a node learns from
  # gossip: the new replica counts once every node knows it as one.
  wait_for 20 "every node knowing $2 as a replica of $3" replica_known "$2" "$3"
}

replica_synced() { # replica_synced PORT
  redis-cli -p "$1" INFO replication 2>/dev/null | grep -q '^master_link_status:up'
}

replica_known() { # replica_known PORT PRIMARY
  local id primary port
  id=$(redis-cli -p "$1" CLUSTER MYID)
  primary=$(redis-cli -p "$2" CLUSTER MYID)
  for port in $(redis-cli -p "$2" CLUSTER NODES | awk '{ split($2, a, "@"); n = split(a[1], b, ":"); print b[n] }'); do
    redis-cli -p "$port" CLUSTER NODES 2>/dev/null | grep -q "^$id [^ ]* [^ ]*slave $primary " || return 1
  done
}

signal_node() { # signal_node DIR PORT SIGNAL
  local pidfile="$1/redis-$2/pid"
  [ -f "$pidfile" ] || die "no node runs on $2"
  kill "-$3" "$(cat "$pidfile")"
}

kill_node() { # kill_node DIR PORT
  local pidfile="$1/redis-$2/pid"
  if [ -f "$pidfile" ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}

stop() { # stop DIR
  local pidfile
  for pidfile in "$1"/*/pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}

# Redis changes into its --dir before it opens its log: every path must be absolute.
[ $# -ge 2 ] && set -- "$1" "$(realpath -m "$2")" "${@:3}"
case "${1:-}" in
  start) start "$2" "$3" ;;
  start-node) start_node "$2" "$3" ;;
  add-replica) add_replica "$2" "$3" "$4" ;;
  kill) kill_node "$2" "$3" ;;
  pause) signal_node "$2" "$3" STOP ;;
  resume) signal_node "$2" "$3" CONT ;;
  stop) stop "$2" ;;
  *) die "usage: cluster.sh start DIR PORTS | start-node DIR PORT | add-replica DIR PORT PRIMARY | kill|pause|resume DIR PORT | stop DIR" ;;
esac
