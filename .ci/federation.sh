#!/usr/bin/env bash
# The federation end to end on loopback over TLS: `deno task federation server` (nats-server
# with a throw-away openssl CA, per-site certificates and nkeys), a coordinator (`serve`) and 4
# sites (`join --part`, the embedded default data); one site is killed mid-run (its task comes
# back after the lease and a restarted site finishes it), then the coordinator is killed mid-run
# and resumed; the records, ledger and checkpoints must equal `deno task train`'s in one process.
# Then local trust: a second server, `serve --trust local` and 2 keyed sites with their own cap
# (`join --trust local --max_epsilon 6`), DEeR, T = 2: the run must finish and each site's own ε
# (printed and in its release log) must equal the coordinator ledger's ε for that site; a second
# run against the first site (its key has spent ≈ 6) and a fresh site with cap 3 must be refused by
# both, with the message, the refusal in their logs and nothing released.
# `.ci/federation.sh local` runs the local-trust scenario alone.
# Every process this script starts is stopped by PID on exit, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deer-federation-ci-XXXXXX")
PIDS=()
# Every process on one libtensorflow intra-op thread, as `train` runs the embedded model
# (tasks/threads.ts): on some CPUs the thread count changes the products' summation order (seen on
# a 2-core AMD EPYC: first phase loss 0.7978035190 with 1 thread, 0.7978035266 with 2), and the
# comparison below is byte for byte.
export TF_NUM_INTRAOP_THREADS=1
log() { echo "federation.sh: $*" >&2; }
# shellcheck source=lib.sh
source .ci/lib.sh
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

central_scenario() {
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
  log "central trust: passed"
}

# start_nats NAME SITES: a `federation server` in $WORK/NAME; sets URL.
start_nats() {
  deno run -A tasks/federation.ts server --dir "$WORK/$1" --sites "$2" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 120); do grep -q '^ready ' "$WORK/$1.log" && break; sleep 0.5; done
  URL=$(sed -n 's/^ready //p' "$WORK/$1.log")
  [ -n "$URL" ] || { cat "$WORK/$1.log"; log "server $1 did not start"; exit 1; }
}

local_scenario() {
  local started=$SECONDS
  start_nats nats-local loc-a,loc-b,loc-c
  log "local trust: server at $URL"
  local train="{\"method\": \"DEeR\", \"is_DP\": 1, \"calibration\": \"local\", \"epsilon\": 6, \"T\": 2, \"seeds\": \"10\""
  echo "{\"sites\": [\"loc-a\", \"loc-b\"], \"train\": $train, \"out\": \"$WORK/local-1\"}}" \
    >"$WORK/local-1.json"
  echo "{\"sites\": [\"loc-a\", \"loc-c\"], \"train\": $train, \"out\": \"$WORK/local-2\"}}" \
    >"$WORK/local-2.json"
  declare -A cap=([loc-a]=6 [loc-b]=6 [loc-c]=3) pid
  for s in loc-a loc-b loc-c; do
    deno run -A tasks/federation.ts join --nats "$URL" --creds "$WORK/nats-local/creds/$s" \
      --site "$s" --data default --part --heartbeat 1 --trust local --max_epsilon "${cap[$s]}" \
      --noise_key "$WORK/$s.key" >"$WORK/$s.log" 2>&1 &
    PIDS+=($!)
    pid[$s]=$!
  done
  deno run -A tasks/federation.ts serve --nats "$URL" --creds "$WORK/nats-local/creds/coordinator" \
    --config "$WORK/local-1.json" --trust local --lease 10 --deadline 60 >"$WORK/local-1.log" 2>&1 ||
    { cat "$WORK/local-1.log" "$WORK/loc-a.log"; log "local trust: serve failed"; exit 1; }
  local out
  out=$(sed -n 's/^results: //p' "$WORK/local-1.log" | tail -n 1)
  # Each site's own ε: its last printed line and its log's last release, against the ledger.
  for s in loc-a loc-b; do
    for _ in $(seq 40); do grep -q "site ε .* after .*/2/1 " "$WORK/$s.log" && break; sleep 0.25; done
  done
  deno eval '
    const [ledgerPath, ...sites] = Deno.args;
    const ledger = JSON.parse(Deno.readTextFileSync(ledgerPath));
    const perSite = ledger.rounds.at(-1).sites;
    sites.forEach((s, k) => {
      const log = JSON.parse(Deno.readTextFileSync(`${s}.key.releases.json`));
      const own = Object.values(log.releases).map((r) => r.epsilon);
      const printed = [...Deno.readTextFileSync(`${s}.log`).matchAll(/site ε (\S+) after/g)]
        .map((m) => Number(m[1]));
      const line = `${s}: own ε ${own.at(-1)} (${own.length} releases), printed ${printed.at(-1)}, ` +
        `ledger ${perSite[k]}`;
      console.error(`federation.sh: ${line}`);
      if (own.length !== 4 || own.at(-1) !== perSite[k] || printed.at(-1) !== perSite[k]) {
        throw new Error(`local trust: the site ε differs from the ledger: ${line}`);
      }
    });
  ' "$out/seed-10/ledger.json" "$WORK/loc-a" "$WORK/loc-b"
  log "local trust: run 1 finished; every site's own ε equals the ledger's per-site ε"
  # Run 2: loc-a's key already spent its cap; loc-c's cap (3) is below the run's ε (6).
  deno run -A tasks/federation.ts serve --nats "$URL" --creds "$WORK/nats-local/creds/coordinator" \
    --config "$WORK/local-2.json" --trust local --lease 10 --deadline 60 >"$WORK/local-2.log" 2>&1 &
  PIDS+=($!)
  local serve2=$!
  for s in loc-a loc-c; do
    for _ in $(seq 160); do kill -0 "${pid[$s]}" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "${pid[$s]}" 2>/dev/null; then
      cat "$WORK/$s.log"; log "local trust: $s did not refuse run 2"; exit 1
    fi
    local rc=0
    wait "${pid[$s]}" || rc=$?
    grep -q "refusing run-.*/1/0: the run asks for noise multiplier .* above its cap --max_epsilon ${cap[$s]} .*nothing was released" "$WORK/$s.log" ||
      { cat "$WORK/$s.log"; log "local trust: $s exited ($rc) without the refusal"; exit 1; }
    deno eval '
      const log = JSON.parse(Deno.readTextFileSync(Deno.args[0]));
      const r = log.refused.at(-1);
      if (!r || !/^run-\w+\/1\/0$/.test(r.id) || !/above its cap/.test(r.reason)) {
        throw new Error(`${Deno.args[0]}: no refusal of run 2 in the log: ${JSON.stringify(log.refused)}`);
      }
    ' "$WORK/$s.key.releases.json"
    [ "$rc" -eq 1 ] || { log "local trust: $s exited with $rc, expected 1"; exit 1; }
    # loc-a took run 1 in the same process: run 2's task must get a runtime of its own.
    if [ "$s" = loc-a ]; then
      grep -q "a task of another run (run-[0-9a-f]*): rebuilding the site for it" "$WORK/$s.log" ||
        { cat "$WORK/$s.log"; log "local trust: loc-a took run 2 with run 1's runtime"; exit 1; }
    fi
    log "local trust: $s refused run 2 ($(grep -o 'this site.s ε would reach [0-9.]*' "$WORK/$s.log" | head -n 1))"
  done
  [ "$(deno eval 'console.log(Object.keys(JSON.parse(Deno.readTextFileSync(Deno.args[0])).releases).length)' "$WORK/loc-c.key.releases.json")" = 0 ] ||
    { log "local trust: loc-c released something"; exit 1; }
  terminate "$serve2" "serve (run 2)"
  terminate "${pid[loc-b]}" "loc-b"
  log "local trust: passed in $((SECONDS - started)) s"
}

if [ "${1:-all}" != local ]; then central_scenario; fi
local_scenario
log "passed"
