#!/usr/bin/env bash
# The federation end to end on loopback over TLS: `deno task federation server` (nats-server
# with a throw-away openssl CA, per-site certificates and nkeys), a coordinator (`serve`) and 4
# sites (`join --part`, the embedded default data); one site is killed mid-run (its task comes
# back after the lease and a restarted site finishes it), then the coordinator is killed mid-run
# and resumed; the records, ledger and checkpoints must equal `deno task train`'s in one process.
# Every process this script starts is stopped by PID on exit, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deer-federation-ci-XXXXXX")
PIDS=()
log() { echo "federation.sh: $*" >&2; }
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT
SITES=(site-a site-b site-c site-d)
TRAIN="{\"method\": \"DEeR\", \"is_DP\": 1, \"calibration\": \"strict\", \"T\": 3, \"seeds\": \"10\", \"out\": \"$WORK/serve\"}"
FLAGS=(--method DEeR --is_DP 1 --calibration strict --T 3 --seeds 10 --node_num 4)

log "single-process train"
deno run -A tasks/train.ts "${FLAGS[@]}" --out "$WORK/train" --exp_name ci >"$WORK/train.log" 2>&1

deno run -A tasks/federation.ts server --dir "$WORK/nats" --sites "$(IFS=,; echo "${SITES[*]}")" \
  >"$WORK/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do grep -q '^ready ' "$WORK/server.log" && break; sleep 0.5; done
URL=$(sed -n 's/^ready //p' "$WORK/server.log")
[ -n "$URL" ] || { cat "$WORK/server.log"; log "server did not start"; exit 1; }
log "server at $URL"
echo "{\"sites\": [\"site-a\", \"site-b\", \"site-c\", \"site-d\"], \"train\": $TRAIN}" \
  >"$WORK/config.json"

declare -A SITE_PID
start_site() {
  deno run -A tasks/federation.ts join --nats "$URL" --creds "$WORK/nats/creds/$1" --site "$1" \
    --data default --part --heartbeat 1 >>"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  SITE_PID[$1]=$!
}
for s in "${SITES[@]}"; do start_site "$s"; done
serve() {
  deno run -A tasks/federation.ts serve --nats "$URL" --creds "$WORK/nats/creds/coordinator" \
    --config "$WORK/config.json" --lease 4 --deadline 120 "$@" >>"$WORK/serve.log" 2>&1 &
  PIDS+=($!)
  SERVE_PID=$!
}
serve
# Kill one site as soon as it has taken its first task (mid-task), restart it after the lease.
for _ in $(seq 240); do kill -0 "$SERVE_PID" || break; grep -q "release sent" "$WORK/site-a.log" 2>/dev/null && break; sleep 0.25; done
kill -9 "${SITE_PID[site-b]}" 2>/dev/null || true
log "killed site-b (pid ${SITE_PID[site-b]})"
sleep 1
start_site site-b
# Kill the coordinator after round 1, then resume it.
for _ in $(seq 480); do kill -0 "$SERVE_PID" || break; grep -q "^round 1:" "$WORK/serve.log" && break; sleep 0.25; done
kill -9 "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" 2>/dev/null || true
log "killed the coordinator after round 1; resuming"
serve --resume
wait "$SERVE_PID" || { cat "$WORK/serve.log"; log "serve failed"; exit 1; }
OUT=$(sed -n 's/^results: //p' "$WORK/serve.log" | tail -n 1)
TRAIN_OUT=$(sed -n 's/^results: //p' "$WORK/train.log" | tail -n 1)
log "comparing $OUT with $TRAIN_OUT"
deno run -A tools/compare_runs.ts "$TRAIN_OUT/seed-10" "$OUT/seed-10"
log "passed"
