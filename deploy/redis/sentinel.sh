#!/usr/bin/env bash
# The one place that runs a replicated Redis under Sentinel on this machine: the tests',
# the chaos suite's and `make up REDIS_MODE=sentinel`'s all come from here.
#
#   sentinel.sh start DIR REDIS_PORTS SENTINEL_PORTS   a primary (first port) and replicas
#                                                       (the others), and a Sentinel per port
#   sentinel.sh start-node DIR PORT                    start the Redis node on PORT again
#   sentinel.sh add-replica DIR PORT PRIMARY           a new replica on PORT of the primary
#                                                       on PRIMARY (the Sentinels find it)
#   sentinel.sh kill DIR PORT                          kill -9 the node (Redis or Sentinel)
#   sentinel.sh split DIR PORT [KEEP]                  cut the Redis node on PORT off from its
#                                                       replicas and the Sentinels; the
#                                                       services still reach it; the replica
#                                                       on KEEP, if given, stays on its side
#   sentinel.sh heal DIR PORT [KEEP]                   let them reach it (and KEEP) again
#   sentinel.sh stop DIR                               stop every process of DIR
#
# Ports are comma lists, on 127.0.0.1. The master's name is `coupon` (REDIS_SENTINEL_MASTER).
# Nodes run a copy of deploy/redis/redis.conf with replicated.conf's lines; Sentinels declare a node down after 1 s without
# an answer and need 2 of 3 to agree. DIR holds a folder per process: its config (Sentinel
# rewrites its own), data, log and pid.
#
# A split is a network partition as the node's peers see it, made with ACLs so that the
# services' connections stay: replicas log in to their primary as a user of their own
# (`coupon-replication`, whose password is made at `start`, kept in DIR/peer-secret, mode
# 600, and written only into the nodes' configuration files), which the split turns off,
# dropping their links; and the default user loses the commands only Sentinels send: PING,
# which they judge a node alive by (every Sentinel finds the node down within
# `down-after-milliseconds` and fails it over), and those they reconfigure a node with
# (REPLICAOF, CONFIG REWRITE, CLIENT KILL), so that, as across a real partition, they cannot
# demote it or drop its clients. Heal gives all back; the Sentinels then demote the old
# primary. With KEEP, the partition leaves that replica on the old primary's side: its link
# stays (a user turned off keeps its connections), and the Sentinels lose it as they lose
# the primary, so they promote another replica and cannot repoint this one until it heals.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MASTER=${REDIS_SENTINEL_MASTER:-coupon}

TAG=sentinel
# shellcheck source=deploy/lib.sh
. "$HERE/../lib.sh"

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
  [ ${#missing[@]} -eq 0 ] && return 0
  # Topologies started in parallel install once: the others wait here, then find it done.
  exec {lock}>/tmp/coupon-sentinel-install.lock
  flock "$lock"
  missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}"
  # The packages start their own services, with Debian's configuration: ours replace them.
  as_root service redis-sentinel stop >/dev/null 2>&1 || true
  as_root service redis-server stop >/dev/null 2>&1 || true
}

start_node() { # start_node DIR PORT
  local node="$1/redis-$2"
  [ -f "$node/args" ] || die "no Redis node on $2 in $1"
  running "$node" "$2" && return 0
  # A copy of redis.conf with replicated.conf's lines: Sentinel has each node rewrite its
  # own file as it reconfigures it (CONFIG REWRITE), which must never be the repository's.
  if [ ! -f "$node/redis.conf" ]; then
    local secret
    secret=$(cat "$1/peer-secret")
    (umask 077
      cat "$HERE/redis.conf" "$HERE/replicated.conf"
      cat <<CONF
# Replication's own user (see sentinel.sh, split).
user coupon-replication on >$secret +psync +replconf +ping
masteruser coupon-replication
masterauth $secret
CONF
    ) >"$node/redis.conf"
  fi
  # shellcheck disable=SC2046 # the saved arguments are words
  redis-server "$node/redis.conf" $(cat "$node/args") --daemonize yes \
    --pidfile "$node/pid" --logfile "$node/redis.log"
  wait_for 10 "Redis on $2 (logs under the topology's folder)" port_open "$2"
}

start() { # start DIR REDIS_PORTS SENTINEL_PORTS
  local dir=$1 ports sentinels primary port
  IFS=, read -r -a ports <<<"$2"
  IFS=, read -r -a sentinels <<<"$3"
  [ ${#ports[@]} -ge 2 ] || die "a primary and at least one replica, please"
  install
  primary=${ports[0]}
  mkdir -p "$dir"
  if [ ! -f "$dir/peer-secret" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/peer-secret")
  fi
  for port in "${ports[@]}"; do
    local node="$dir/redis-$port"
    mkdir -p "$node"
    local args="--port $port --bind 127.0.0.1 --dir $node"
    if [ "$port" != "$primary" ]; then args="$args --replicaof 127.0.0.1 $primary"; fi
    echo "$args" >"$node/args"
    # A node started anew gets a configuration made from this start's files and secret.
    port_open "$port" || rm -f "$node/redis.conf"
    start_node "$dir" "$port"
  done
  for port in "${sentinels[@]}"; do
    local node="$dir/sentinel-$port"
    mkdir -p "$node"
    running "$node" "$port" && continue
    # Sentinel rewrites its file as it learns the topology: a fresh one per start.
    cat >"$node/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
dir $node
sentinel resolve-hostnames no
sentinel monitor $MASTER 127.0.0.1 $primary 2
sentinel down-after-milliseconds $MASTER 1000
sentinel failover-timeout $MASTER 5000
sentinel parallel-syncs $MASTER 1
CONF
    redis-sentinel "$node/sentinel.conf" --daemonize yes --pidfile "$node/pid" \
      --logfile "$node/sentinel.log"
    wait_for 10 "a Sentinel on $port (logs under the topology's folder)" port_open "$port"
  done
  log "primary 127.0.0.1:$primary, replicas ${ports[*]:1}, Sentinels ${sentinels[*]} (master $MASTER)"
}

add_replica() { # add_replica DIR PORT PRIMARY
  local node="$1/redis-$2"
  [ -f "$1/peer-secret" ] || die "no topology in $1"
  [ -f "$node/args" ] && die "a Redis node on $2 in $1 already"
  mkdir -p "$node"
  echo "--port $2 --bind 127.0.0.1 --dir $node --replicaof 127.0.0.1 $3" >"$node/args"
  start_node "$1" "$2"
  log "replica 127.0.0.1:$2 of $3 added"
}

kill_node() { # kill_node DIR PORT
  local pidfile
  for pidfile in "$1/redis-$2/pid" "$1/sentinel-$2/pid"; do
    if [ -f "$pidfile" ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
  done
}

# The commands only Sentinels send (the services never do; their readiness probe's PING
# fails on a split node, as it would across a partition).
SENTINEL_ONLY_OFF="-ping -slaveof -replicaof -config|rewrite -client|kill"
SENTINEL_ONLY_ON="+ping +slaveof +replicaof +config|rewrite +client|kill"

split() { # split DIR PORT [KEEP]
  local port=$2 keep=${3:-} kept id
  [ -f "$1/redis-$port/args" ] || die "no Redis node on $port in $1"
  redis-cli -p "$port" ACL SETUSER coupon-replication off >/dev/null
  # Turning a user off keeps its connections: the replicas' links are dropped here (before
  # the default user loses CLIENT KILL below), and cannot log in again. A refused kill must
  # stop the split: a split that left the links up was the asymmetric one, unannounced.
  if [ -z "$keep" ]; then
    redis-cli -p "$port" CLIENT KILL USER coupon-replication >/dev/null
  else
    [ -f "$1/redis-$keep/args" ] || die "no Redis node on $keep in $1"
    # The kept replica's link, seen from its end (laddr) and from the primary's (addr).
    kept=$(redis-cli -p "$keep" CLIENT LIST TYPE master | sed -nE 's/.* laddr=([^ ]+) .*/\1/p')
    [ -n "$kept" ] || die "$keep is not linked to a primary"
    for id in $(redis-cli -p "$port" CLIENT LIST TYPE replica |
      awk -v kept="addr=$kept" '$2 != kept { sub(/^id=/, "", $1); print $1 }'); do
      # A link that dropped on its own since the list is already what this wants.
      redis-cli -p "$port" CLIENT KILL ID "$id" >/dev/null || true
    done
    redis-cli -p "$keep" ACL SETUSER default $SENTINEL_ONLY_OFF >/dev/null
  fi
  redis-cli -p "$port" ACL SETUSER default $SENTINEL_ONLY_OFF >/dev/null
  log "127.0.0.1:$port cut off from the Sentinels and its replicas${keep:+ but $keep}"
}

heal() { # heal DIR PORT [KEEP]
  local port=$2 keep=${3:-}
  [ -f "$1/redis-$port/args" ] || die "no Redis node on $port in $1"
  if [ -n "$keep" ]; then redis-cli -p "$keep" ACL SETUSER default $SENTINEL_ONLY_ON >/dev/null; fi
  redis-cli -p "$port" ACL SETUSER default $SENTINEL_ONLY_ON >/dev/null
  redis-cli -p "$port" ACL SETUSER coupon-replication on >/dev/null
  log "127.0.0.1:$port${keep:+ and $keep} reachable by their peers again"
}

stop() { # stop DIR
  local pidfile
  for pidfile in "$1"/*/pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 0.5
  for pidfile in "$1"/*/pid; do
    [ -f "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  start) [ $# -eq 4 ] || die "usage: sentinel.sh start DIR REDIS_PORTS SENTINEL_PORTS"; start "$2" "$3" "$4" ;;
  start-node) start_node "$2" "$3" ;;
  add-replica) add_replica "$2" "$3" "$4" ;;
  kill) kill_node "$2" "$3" ;;
  split) split "$2" "$3" "${4:-}" ;;
  heal) heal "$2" "$3" "${4:-}" ;;
  stop) stop "$2" ;;
  *) die "usage: sentinel.sh start|start-node|add-replica|kill|split|heal|stop ... (see the top of this file)" ;;
esac
