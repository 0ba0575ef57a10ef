# Shell helpers that deploy/'s scripts share; sourced, never run. A script sets TAG (the
# prefix of its messages) before sourcing this.

log() { echo "[$TAG] $*" >&2; }
die() { echo "[$TAG] error: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether the node in NODE_DIR already runs on PORT (a start run again reuses it). A port
# something else holds ends the start: tests pick free ports before they are bound, and a
# test running beside may take one meanwhile (the caller tries again on other ports).
running() { # running NODE_DIR PORT
  port_open "$2" || return 1
  [ -f "$1/pid" ] && kill -0 "$(cat "$1/pid")" 2>/dev/null && return 0
  die "port $2 is taken by another process"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${seconds}s"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
