#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for CI and the sweep tests — no systemd, no root-wide
# config: everything (config, state, spool, logs, PID files, the munge socket) lives in one
# folder, $SLURM_CI_DIR (default .tools/slurm).
#
#   .ci/slurm.sh install   apt-get install Debian's slurmctld slurmd slurm-client munge
#   .ci/slurm.sh start     writes slurm.conf, starts munged, slurmctld and slurmd, waits for the
#                          node to be idle; prints `export SLURM_CONF=…` for the clients
#   .ci/slurm.sh stop      stops the three daemons by their PID files
#   .ci/slurm.sh env       prints `export SLURM_CONF=…`
#
# A caller that starts the cluster must stop it on every exit path: `trap '.ci/slurm.sh stop' EXIT`.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${SLURM_CI_DIR:-$PWD/.tools/slurm}
CONF=$DIR/slurm.conf

log() { echo "slurm.sh: $*" >&2; }
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_one() { # PID file, name
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    terminate "$pid" "$name"
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null; then
    log "already installed: $(sbatch --version)"
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge
  ;;
start)
  for d in slurmctld slurmd munged sbatch; do
    command -v "$d" >/dev/null || { log "$d not found; run .ci/slurm.sh install"; exit 1; }
  done
  if pid_alive "$DIR/slurmctld.pid"; then
    log "already running (slurmctld pid $(cat "$DIR/slurmctld.pid")); stop it first"
    exit 1
  fi
  mkdir -p "$DIR"/{state,spool,munge}
  rm -f "$DIR"/*.pid "$DIR"/munge/*.pid
  chmod 700 "$DIR/munge"
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))
  real_mb=$((mem_mb * 3 / 4)) # below the real memory, or the node drains
  [ -f "$DIR/munge.key" ] || { head -c 1024 /dev/urandom >"$DIR/munge.key"; chmod 400 "$DIR/munge.key"; }
  cat >"$CONF" <<EOF
ClusterName=deerci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURM_CI_PORT:-16817}
SlurmdPort=$((${SLURM_CI_PORT:-16817} + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((real_mb / cpus))
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=60
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  munged --force --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
    --key-file="$DIR/munge.key" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed"
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 100); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
    [ "$state" = "idle" ] && break
    sleep 0.2
  done
  if [ "${state:-}" != "idle" ]; then
    log "the node is not idle (state '${state:-none}'); see $DIR/slurmctld.log and slurmd.log"
    exit 1
  fi
  log "one-node cluster up on 127.0.0.1 ($host, $cpus CPUs, ${real_mb} MB); config $CONF"
  echo "export SLURM_CONF=$CONF"
  ;;
stop)
  stop_one "$DIR/slurmd.pid" slurmd
  stop_one "$DIR/slurmctld.pid" slurmctld
  stop_one "$DIR/munge/munged.pid" munged
  ;;
env)
  echo "export SLURM_CONF=$CONF"
  ;;
*)
  echo "usage: .ci/slurm.sh install|start|stop|env" >&2
  exit 2
  ;;
esac
