#!/usr/bin/env bash
# The GPU check: on a machine with a GPU and no network, with the folder bench/gpu_stage.sh wrote
# (default .gpucarry/; this script is copied into it):
#   deno.xz          the deno binary (xz),
#   repo.tar.gz      the toolkit with a trimmed node_modules/ (tfjs-core, -cpu, -webgpu, …),
#   denodir.tar.gz   Deno's npm metadata cache (so that nothing is fetched),
#   .gl/*.deb        optional (there or in the current folder): the Vulkan/EGL loaders (libvulkan1,
#                    libegl1, …), unpacked when no libvulkan.so.1 is installed,
# it checks that Deno's WebGPU sees the GPU (adapter, isFallbackAdapter, limits; if the default
# driver search finds only a fallback, every nvidia_icd.json found is named explicitly), then
# measures. Everything goes to $OUT (default /tmp/gpu_check): gpu_check.log (all output), *.jsonl
# (one JSON line per figure), *.err, and summary.txt, one line per figure written the moment the
# figure is, so a run that is killed still leaves its figures; the summary is printed again at the
# end. No step runs past GPU_CHECK_BUDGET seconds from the start (default 540, for a 600 s limit):
# each step's timeout is cut to what is left, and a step with under 30 s left is skipped, saying so.
# PyTorch (GPU_CHECK_PYTHON, default python3) runs on CUDA (float32, TF32 off); where it cannot
# import torch, or torch sees no CUDA device, the summary says so and the PyTorch figures are left
# out.
#
# Usage: bash .gpucarry/gpu_check.sh [probe|short|wgsl|products|submit|rows]
#   (none): the backend line, the webgpu tests (equivalence and memory against the `cpu` backend:
#     libtensorflow is not carried; the WGSL kernels against the tfjs composition on the GPU) and
#     `deno task bench`'s tiny and ViT-B/16 figures (bench.jsonl): the LoRA step (awaited median
#     and pipelined_ms) at batch 8, 32 and 64, 5 steps after 1 warm-up, each with the PyTorch step
#     beside it and their ratio (≈ 6 min on an H200 by earlier timings).
#   probe: only bench/webgpu_probe.ts b16 --batch 8 (probe.jsonl: where a step's time goes;
#     ≈ 1 min).
#   short: the ViT-B/16 webgpu step at batch 8 and 32 (3 steps) and PyTorch at 8, 32, 64 (≈ 2 min).
#   wgsl: with the fused WGSL kernels (lib/webgpu_kernels.ts) and without (DEER_WGSL=0), into
#     wgsl.jsonl, each record tagged "DEER_WGSL": the product microbenchmark (webgpu_probe.ts
#     matmul: the step's products at batch 8 as tf.matMul and DeerWgsl_MatMul with each tile,
#     64x64, 128x64 and 128x128 (with and without its register prefetch), GFLOP/s; 120 s allowed
#     with the kernels, 90 s without), the
#     probe's kernel count at batch 8, and the ViT-B/16 step at batch 8, 32 and 64 (3 steps after
#     1 warm-up); both ways for each before the next, so that a cut run keeps whole pairs (≈ 5 min).
#   products: where the fast path's products go, step by step (products.jsonl, each record
#     tagged): the ViT-B/16 step at batch 8 and 32 (3 steps after 1 warm-up) with products of
#     2^18 outputs and more on DeerWgsl_MatMul (the default) and with every product on it
#     (DEER_WGSL_MM_MIN_OUTPUTS=262144, 0), then with each tile (DEER_WGSL_MM_TILE=64x64, 128x64,
#     128x128) at the default threshold (≈ 4–5 min). The microbenchmark of `wgsl` times products
#     alone; this times them in the step, where the small ones' share decides the threshold.
#   submit: the ViT-B/16 step at batch 8 and 32 (3 steps after 1 warm-up) with tfjs-webgpu
#     submitting a command buffer every 15 (its default), 64 and 1000 dispatches
#     (DEER_WEBGPU_SUBMIT_BATCH), then with every block's adapted weight in one product and one
#     per block (DEER_WGSL_QKV_STACK=1, 0), into submit.jsonl, each record tagged (≈ 4 min).
#   rows: the row kernels (LayerNorm, its gradient, the softmax backward) one invocation per row
#     and one workgroup per row (DEER_WGSL_ROWS=thread, group; lib/webgpu_kernels.ts
#     wgslRowLayout), into rows.jsonl, each record tagged: the probe's step at batch 8 (its
#     kernels' own GPU time, per kernel in "top") and the ViT-B/16 step at batch 8 and 32 (3 steps
#     after 1 warm-up), both layouts at each before the next (≈ 3 min).
# GPU_CHECK_ALLOW_FALLBACK=1 runs the GPU steps on a fallback adapter too. GPU_CHECK_DRY=1 is a
# dry run for a machine without a GPU (lavapipe, Mesa's software Vulkan): every stage runs, with
# the tiny ViT in place of ViT-B/16 (same figure names, "model":"tiny"), batches 1, 2, 4 in place
# of 8, 32, 64, 2 steps after 1 warm-up, the products at batch 1 with 1 repetition, and PyTorch
# on the CPU where it has no CUDA. Dry run on lavapipe (2 shared cores; staged with
# `bash bench/gpu_stage.sh /tmp/gpucarry`, run from a scratch folder holding .gpucarry -> it, as
# `GPU_CHECK_DRY=1 GPU_CHECK_ALLOW_FALLBACK=1 GPU_CHECK_PYTHON=<venv python with CPU torch>
# OUT=/tmp/x bash .gpucarry/gpu_check.sh [mode]`): probe 21 s, short 15 s, wgsl 47 s
# (three product tiles, 128x128 with and without prefetch), submit 25 s, none 52 s; later, with
# the WGSL kernel tests in none and without torch: wgsl 90 s, none 103 s.
set -u
MODE=${1:-default}
case "$MODE" in default | probe | short | wgsl | products | submit | rows) ;; *)
  echo "gpu_check.sh: mode '$MODE': use probe, short, wgsl, products, submit, rows or none" >&2
  exit 2
  ;;
esac
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
HERE=$PWD
CARRY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/deer-gpu}
PY=${GPU_CHECK_PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-540}
DRY=${GPU_CHECK_DRY:-0}
T0=$SECONDS
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
# This mode's figure files start empty (a rerun into the same OUT does not mix runs).
case "$MODE" in default | short) rm -f "$OUT"/bench.{jsonl,err} ;; *) rm -f "$OUT/$MODE".{jsonl,err} ;; esac
echo "=== bench/gpu_check.sh $MODE, $(date -u '+%F %T') UTC, OUT=$OUT"
step() { echo "== $* ($((SECONDS - T0)) s)"; }
# note LINE: a summary line, kept at once.
note() {
  echo "$*" >>"$SUMMARY"
  echo "summary: $*"
}
left() { echo $((BUDGET - (SECONDS - T0))); }

# The figures' sizes: ViT-B/16 at 8, 32, 64, or the dry run's stand-ins.
if [ "$DRY" = 1 ]; then
  MODEL=(--model tiny) BATCHES=(1 2 4) STEPS=2 WARMUP=1
  PROBE=(tiny --batch 2 --reps 2) MATMUL=(--batch 1 --reps 1 --runs 1)
  note "DRY RUN (GPU_CHECK_DRY=1): tiny ViT in place of ViT-B/16, batches ${BATCHES[*]} for 8 32 64"
else
  MODEL=() BATCHES=(8 32 64) STEPS=5 WARMUP=1
  PROBE=(b16 --batch 8) MATMUL=(--batch 8)
fi

# One field of a JSON line (numbers, strings, booleans; not arrays).
field() { sed -nE "s/.*\"$1\": ?(\"[^\"]*\"|[^],}[]*).*/\1/p" <<<"$2"; }
# A figure's summary line: its name and the fields that say what was measured.
brief() {
  local s k v
  s=$(field name "$1" | tr -d '"')
  for k in DEER_WGSL DEER_WEBGPU_SUBMIT_BATCH DEER_WGSL_QKV_STACK DEER_WGSL_ROWS DEER_WGSL_MM_MIN_OUTPUTS DEER_WGSL_MM_TILE wgsl model device product impl cpu_forward batch ms min_ms pipelined_ms wall_ms \
    kernels kernel_gpu_ms dispatches host_record_ms host_us_per_dispatch read_wait_ms \
    gflops kernel_gflops dispatch_ms matmul_gflops add_gb_s ratio ratio_min \
    target loss_last description real_gpu gpu_figures torch_device exit; do
    v=$(field "$k" "$1")
    [ -n "$v" ] && s+=" $k=$v"
  done
  echo "$s"
}
# fig LIMIT FILE TAG CMD…: runs CMD for at most LIMIT seconds (less when the budget is short);
# its JSON lines go to FILE (TAG, e.g. "DEER_WGSL":"1", added to each) and to the summary as they
# come, its other output to FILE's .err.
fig() {
  local limit=$1 file=$2 tag=$3 l t rc
  shift 3
  l=$(left)
  if [ "$l" -lt 30 ]; then
    note "skipped, $l s of the ${BUDGET} s budget left: ${*: -6}"
    return
  fi
  [ "$limit" -gt $((l - 15)) ] && limit=$((l - 15))
  t=$SECONDS
  timeout -k 10 "$limit" "$@" 2>>"${file%.jsonl}.err" | while IFS= read -r line; do
    case "$line" in
    '{'*)
      [ -n "$tag" ] && line="{$tag,${line#\{}"
      echo "$line" >>"$file"
      note "$(brief "$line")"
      ;;
    *) echo "$line" >>"${file%.jsonl}.err" ;;
    esac
  done
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    note "timed out after $((SECONDS - t)) s (limit $limit s): $*"
  elif [ "$rc" != 0 ]; then
    note "exit $rc after $((SECONDS - t)) s: $*; last lines of ${file%.jsonl}.err:"
    tail -n 3 "${file%.jsonl}.err" | sed 's/^/  /' | tee -a "$SUMMARY"
  else
    echo "($((SECONDS - t)) s)"
  fi
}

if [ ! -f "$CARRY/deno.xz" ] || [ ! -f "$CARRY/repo.tar.gz" ] || [ ! -f "$CARRY/denodir.tar.gz" ]; then
  echo "gpu_check.sh: $CARRY lacks deno.xz, repo.tar.gz or denodir.tar.gz: run" \
    "bench/gpu_stage.sh [DEST] and then bash DEST/gpu_check.sh (the copy it writes)" >&2
  exit 2
fi
step "loaders"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in "$CARRY"/.gl/*.deb "$HERE"/.gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
ldconfig -p | grep -E "libvulkan.so.1|libEGL.so.1|libGLX_nvidia.so.0" || echo "no Vulkan/EGL loader"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "no nvidia-smi"; fi
# Where NVIDIA's Vulkan ICD (nvidia_icd.json) may be; GPU_CHECK_ICD_DIRS (space-separated)
# replaces the list.
ICD_DIRS=(/usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d
  /usr/local/share/vulkan/icd.d)
[ -n "${GPU_CHECK_ICD_DIRS:-}" ] && read -r -a ICD_DIRS <<<"$GPU_CHECK_ICD_DIRS"
for d in "${ICD_DIRS[@]}"; do ls -l "$d" 2>/dev/null; done

step "unpack"
rm -rf "$WORK" && mkdir -p "$WORK"
xz -dc "$CARRY/deno.xz" >"$WORK/deno" && chmod +x "$WORK/deno"
tar -xzf "$CARRY/repo.tar.gz" -C "$WORK"
mkdir -p "$WORK/denodir" && tar -xzf "$CARRY/denodir.tar.gz" -C "$WORK/denodir"
export PATH=$WORK:$PATH DENO_DIR=$WORK/denodir NO_COLOR=1
mkdir -p -m 700 "$WORK/xdg" && export XDG_RUNTIME_DIR=$WORK/xdg
cd "$WORK/repo" || exit 1
deno --version | head -1

probe() {
  deno eval --no-config '
const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
const i = a?.info;
console.log(JSON.stringify(a ? { vendor: i.vendor, architecture: i.architecture,
  description: i.description, isFallback: i.isFallbackAdapter ?? a.isFallbackAdapter ?? false,
  maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
  maxBufferSize: a.limits.maxBufferSize, features: [...a.features] } : null));'
}
short_adapter() { sed -E 's/,"features":\[[^]]*\]//' <<<"$1"; }

step "adapter (default driver search)"
adapter=$(probe 2>"$OUT/adapter.err")
echo "adapter: $adapter"
tail -n 5 "$OUT/adapter.err"
if [[ "$adapter" != *'"isFallback":false'* ]]; then
  note "default driver search: $(short_adapter "$adapter")"
  first=$adapter
  icds=$(find "${ICD_DIRS[@]}" -name 'nvidia_icd*.json' 2>/dev/null)
  [ -z "$icds" ] && note "no nvidia_icd.json in ${ICD_DIRS[*]}: NVIDIA's Vulkan ICD is missing"
  for icd in $icds; do
    step "adapter with NVIDIA's ICD named (VK_DRIVER_FILES=$icd)"
    export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
    egl=$(find "$(dirname "$(dirname "$icd")")" -name '10_nvidia.json' 2>/dev/null | head -1)
    [ -n "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    adapter=$(probe 2>>"$OUT/adapter.err")
    echo "adapter: $adapter"
    tail -n 5 "$OUT/adapter.err"
    note "with $icd named: $(short_adapter "$adapter")"
    [[ "$adapter" == *'"isFallback":false'* ]] && break
    unset VK_DRIVER_FILES VK_ICD_FILENAMES __EGL_VENDOR_LIBRARY_FILENAMES
    adapter=$first
  done
fi
echo "$adapter" >"$OUT/adapter.json"
real=0
[[ "$adapter" == *'"isFallback":false'* ]] && real=1
[ "${GPU_CHECK_ALLOW_FALLBACK:-0}" = 1 ] && [ "$adapter" != null ] && real=1
note "adapter: $(short_adapter "$adapter")"
[ "$real" = 1 ] || note "no real GPU adapter (GPU_CHECK_ALLOW_FALLBACK=1 takes a fallback one): webgpu figures skipped"

step "PyTorch ($PY)"
torch_info=$("$PY" -c 'import torch; c = torch.cuda.is_available()
print(torch.__version__, int(c), torch.cuda.get_device_name() if c else "")' 2>"$OUT/torch_probe.err")
TORCH_DEVICE=
if [ -z "$torch_info" ]; then
  note "PyTorch: $PY cannot import torch ($(tail -n 1 "$OUT/torch_probe.err")): PyTorch figures skipped"
elif [ "$(cut -d' ' -f2 <<<"$torch_info")" = 1 ]; then
  TORCH_DEVICE=cuda
  note "PyTorch: torch $torch_info (CUDA)"
elif [ "$DRY" = 1 ]; then
  TORCH_DEVICE=cpu
  note "PyTorch: torch $(cut -d' ' -f1 <<<"$torch_info") sees no CUDA device: on the CPU (dry run)"
else
  note "PyTorch: torch $(cut -d' ' -f1 <<<"$torch_info") sees no CUDA device: PyTorch figures skipped"
fi

# torch_steps LIMIT: the PyTorch ViT-B/16 step at every batch (bench.jsonl).
torch_steps() {
  [ -n "$TORCH_DEVICE" ] || return 0
  for b in "${BATCHES[@]}"; do
    step "PyTorch ViT-B/16 step, batch $b, $TORCH_DEVICE"
    fig "$1" "$OUT/bench.jsonl" "" env PYTHONUNBUFFERED=1 "$PY" bench/vit_b16_lora_torch.py 10 2 2 \
      --device "$TORCH_DEVICE" --batch "$b" "${MODEL[@]}"
  done
}

if [ "$real" = 1 ]; then
  export DEER_BACKEND=webgpu
  # ab_steps FILE VAR "VALUES" COUNT: the ViT-B/16 step (3 steps after 1 warm-up) at the first COUNT
# of the batches, with VAR set to each of VALUES at each batch before the next, so that a cut run
# keeps whole comparisons; 60, 90, 120 s allowed at the three batches; each record tagged VAR.
ab_steps() {
  local file=$1 var=$2 values=$3 count=$4 limits=(60 90 120) i v b
  for ((i = 0; i < count; i++)); do
    for v in $values; do
      b=${BATCHES[$i]}
      step "webgpu ViT-B/16 step, batch $b, $var=$v"
      fig "${limits[$i]}" "$file" "\"$var\":\"$v\"" env "$var=$v" \
        deno run -A bench/figures.ts b16 --batch "$b" --steps 3 --warmup 1 "${MODEL[@]}"
    done
  done
}

case "$MODE" in
  probe)
    step "webgpu probe (${PROBE[*]})"
    fig 240 "$OUT/probe.jsonl" "" deno run -A bench/webgpu_probe.ts "${PROBE[@]}"
    ;;
  wgsl)
    for w in 1 0; do
      step "product microbenchmark (${MATMUL[*]}), DEER_WGSL=$w"
      # Five implementations per product with the kernels (tf.matMul, three tiles, 128x128 without
      # prefetch), one without.
      fig $((w == 1 ? 120 : 90)) "$OUT/wgsl.jsonl" "\"DEER_WGSL\":\"$w\"" env DEER_WGSL=$w \
        deno run -A bench/webgpu_probe.ts matmul "${MATMUL[@]}"
    done
    for w in 1 0; do
      step "webgpu probe (${PROBE[*]} --step-only), DEER_WGSL=$w"
      fig 120 "$OUT/wgsl.jsonl" "\"DEER_WGSL\":\"$w\"" env DEER_WGSL=$w \
        deno run -A bench/webgpu_probe.ts "${PROBE[@]}" --step-only
    done
    ab_steps "$OUT/wgsl.jsonl" DEER_WGSL "1 0" 3
    ;;
  rows)
    for r in thread group; do
      step "webgpu probe (${PROBE[*]} --step-only), DEER_WGSL_ROWS=$r"
      fig 120 "$OUT/rows.jsonl" "\"DEER_WGSL_ROWS\":\"$r\"" env DEER_WGSL_ROWS=$r \
        deno run -A bench/webgpu_probe.ts "${PROBE[@]}" --step-only
    done
    ab_steps "$OUT/rows.jsonl" DEER_WGSL_ROWS "thread group" 2
    ;;
  products)
    # The threshold first (the default against every product on the kernel), then the tile.
    ab_steps "$OUT/products.jsonl" DEER_WGSL_MM_MIN_OUTPUTS "262144 0" 2
    ab_steps "$OUT/products.jsonl" DEER_WGSL_MM_TILE "64x64 128x64 128x128" 2
    ;;
  submit)
    # Dispatches per command-buffer submission: tfjs' 15, then 64 and 1000.
    ab_steps "$OUT/submit.jsonl" DEER_WEBGPU_SUBMIT_BATCH "15 64 1000" 2
    # The adapted weights: one product for every block (the default), or one per block.
    ab_steps "$OUT/submit.jsonl" DEER_WGSL_QKV_STACK "1 0" 2
    ;;
  short)
    torch_steps 60
    limits=(90 120)
    for i in 0 1; do
      b=${BATCHES[$i]}
      step "webgpu ViT-B/16 step, batch $b"
      fig "${limits[$i]}" "$OUT/bench.jsonl" "" \
        deno run -A bench/figures.ts b16 --batch "$b" --steps 3 --warmup 1 "${MODEL[@]}"
    done
    ;;
  default)
    step "backend line"
    deno eval 'import "./lib/backend.ts";' 2>&1 | grep "deer:" | tee "$OUT/backend_line.txt"
    note "backend: $(cat "$OUT/backend_line.txt")"

    step "webgpu tests (reference backend: cpu)"
    l=$(($(left) - 15))
    [ "$l" -gt 150 ] && l=150
    if [ "$l" -lt 30 ]; then
      note "tests skipped: the time budget is spent"
    else
      DEER_REQUIRE_WEBGPU=1 DEER_REFERENCE_BACKEND=cpu timeout -k 10 "$l" \
        deno test -A --no-check tests/webgpu_equivalence.test.ts tests/webgpu_memory.test.ts \
        tests/webgpu_wgsl.test.ts >"$OUT/tests.log" 2>&1
      rc=$?
      grep -E "^(ok|FAILED) \||\.\.\. (ok|FAILED)|error" "$OUT/tests.log" | head -20
      note "tests: exit $rc$([ $rc = 124 ] && echo " (timed out after $l s)"), $(grep -E '^(ok|FAILED) \|' "$OUT/tests.log" | tail -1)"
    fi

    step "benchmark (deno task bench --only tiny,b16)"
    torch=(--torch none)
    [ -n "$TORCH_DEVICE" ] && torch=(--torch "$PY" --torch-device "$TORCH_DEVICE")
    extra=()
    [ "$DRY" = 1 ] && extra=(--fallback-gpu --b16-model tiny)
    batches=$(
      IFS=,
      echo "${BATCHES[*]}"
    )
    fig 330 "$OUT/bench.jsonl" "" deno run -A bench/main.ts --backend webgpu --only tiny,b16 \
      "${torch[@]}" --max-wait 0 --steps "$STEPS" --warmup "$WARMUP" --b16-batches "$batches" \
      "${extra[@]}"
    ;;
  esac
elif [ "$MODE" = default ] || [ "$MODE" = short ]; then
  # Without an adapter, the PyTorch references alone.
  torch_steps 120
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv
fi

step "summary (mode $MODE; figures in $OUT)"
cat "$SUMMARY"
