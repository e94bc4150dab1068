# Shell helpers that the .ci scripts source (after `cd` to the repository root and defining
# their own `log`).

# terminate PID NAME: SIGTERM, up to 5 s for the process to exit, then SIGKILL (said via log).
terminate() {
  local pid=$1 name=$2
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop on SIGTERM; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
}
