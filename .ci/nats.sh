#!/usr/bin/env bash
# nats-server for the federation tests (tests/federation_*.test.ts) and CI.
#
#   .ci/nats.sh install   apt-get install Debian's nats-server (JetStream needs >= 2.2)
#   .ci/nats.sh stop      stops every server recorded in $DEER_NATS_PID_DIR, by PID
#
# The tests start their own servers (lib/federation/server.ts: loopback only, a temporary
# folder each) and stop them by PID in `finally`. With DEER_NATS_PID_DIR set, each running
# server's PID is also recorded there as nats-server-<pid>.pid until it stops; `stop` ends those
# a crashed or killed test left behind, checking that each PID still is a nats-server.
set -euo pipefail

cd "$(dirname "$0")/.."

log() { echo "nats.sh: $*" >&2; }
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

nats_bin() { PATH=$PATH:/usr/sbin:/usr/local/sbin command -v nats-server; }

case "${1:-}" in
install)
  if ! bin=$(nats_bin); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server
    bin=$(nats_bin) || { log "nats-server installed but not found on PATH or in /usr/sbin"; exit 1; }
  fi
  version=$("$bin" --version)
  log "using $bin ($version)"
  # JetStream (streams, KV, object store) needs 2.2 or later; 2.9 is what the tests ran on.
  minor=$(sed -E 's/.*v?2\.([0-9]+)\..*/\1/' <<<"$version")
  if [[ ! "$version" =~ v?2\. ]] || [ "$minor" -lt 2 ]; then
    log "$version is too old for JetStream (need 2.2 or later)"
    exit 1
  fi
  ;;
stop)
  dir=${DEER_NATS_PID_DIR:-}
  [ -n "$dir" ] && [ -d "$dir" ] || exit 0
  for pidfile in "$dir"/nats-server-*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "nats-server" ]; then
      terminate "$pid" nats-server
      log "stopped nats-server (pid $pid) left by a test"
    fi
    rm -f "$pidfile"
  done
  ;;
*)
  echo "usage: $0 install|stop" >&2
  exit 2
  ;;
esac
