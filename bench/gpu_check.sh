#!/usr/bin/env bash
# The GPU check: on a machine with a GPU and no network, from a folder that holds
#   .gpucarry/deno.xz          the deno binary (xz),
#   .gpucarry/repo.tar.gz      the toolkit with a trimmed node_modules/ (tfjs-core, -cpu, -webgpu, …),
#   .gpucarry/denodir.tar.gz   Deno's npm metadata cache (so that nothing is fetched),
#   .gl/*.deb                  optional: the Vulkan/EGL loaders (libvulkan1, libegl1, …),
# it checks that Deno's WebGPU sees the GPU (adapter, isFallbackAdapter, limits; with NVIDIA's
# Vulkan ICD named explicitly if the default search finds none), runs the webgpu tests (against the
# `cpu` backend: libtensorflow is not carried), and the benchmark: the ViT-B/16 LoRA step at batch
# 8, 32 and 64 on webgpu and the same steps in PyTorch on CUDA (float32, TF32 off). Everything
# goes to $OUT (default /tmp/gpu_check); the last lines are a summary. GPU_CHECK_ALLOW_FALLBACK=1
# runs the GPU steps on a fallback adapter too (to try the script on lavapipe).
#
# Usage: bash .gpucarry/gpu_check.sh [probe|short|wgsl]
#   probe: only bench/webgpu_probe.ts (see there); short: the ViT-B/16 step at batch 8 and 32 with
#   few steps, and PyTorch CUDA at 8, 32 and 64 (for a device budget of a few minutes); wgsl: the
#   ViT-B/16 webgpu step at batch 8, 32 and 64 with the fused WGSL kernels (lib/webgpu_kernels.ts)
#   and without (DEER_WGSL=0), plus the probe's kernel count at batch 8 both ways and the product
#   microbenchmark (webgpu_probe.ts matmul: the step's products at batch 8 as tf.matMul and as
#   DeerWgsl_MatMul, GFLOP/s) both ways (wgsl.jsonl).
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
HERE=$PWD
CARRY=$HERE/.gpucarry
WORK=/tmp/deer-gpu
T0=$SECONDS
step() { echo "== $* ($((SECONDS - T0)) s)"; }
summary=()

step "loaders"
if ! ldconfig -p | grep -q libvulkan.so.1 && ls "$HERE"/.gl/*.deb >/dev/null 2>&1; then
  for f in "$HERE"/.gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
ldconfig -p | grep -E "libvulkan.so.1|libEGL.so.1" || echo "no Vulkan/EGL loader"
nvidia-smi -L || true
for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d; do
  ls -l "$d" 2>/dev/null
done

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

step "adapter (default driver search)"
adapter=$(probe 2>"$OUT/probe.err")
echo "adapter: $adapter"
tail -n 5 "$OUT/probe.err"
if [[ "$adapter" != *'"isFallback":false'* ]]; then
  step "adapter with NVIDIA's ICD named (VK_DRIVER_FILES)"
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export VK_ICD_FILENAMES=$VK_DRIVER_FILES
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  first=$adapter
  adapter=$(probe 2>>"$OUT/probe.err")
  echo "adapter: $adapter"
  tail -n 5 "$OUT/probe.err"
  summary+=("default driver search: $first; with NVIDIA's ICD named: $adapter")
  if [[ "$adapter" != *'"isFallback":false'* ]]; then
    unset VK_DRIVER_FILES VK_ICD_FILENAMES __EGL_VENDOR_LIBRARY_FILENAMES
    adapter=$first
  fi
fi
echo "$adapter" >"$OUT/adapter.json"
real=0
[[ "$adapter" == *'"isFallback":false'* ]] && real=1
[ "${GPU_CHECK_ALLOW_FALLBACK:-0}" = 1 ] && [ "$adapter" != null ] && real=1
summary+=("adapter: $adapter")

if [ "${1:-}" = probe ]; then
  step "webgpu probe (b16, batch 8)"
  DEER_BACKEND=webgpu timeout 240 deno run -A bench/webgpu_probe.ts b16 --batch 8 \
    >"$OUT/probe.jsonl" 2>"$OUT/probe_run.err"
  echo "probe exit $?"
  cat "$OUT/probe.jsonl"
  tail -n 5 "$OUT/probe_run.err"
  exit 0
fi

if [ "${1:-}" = wgsl ]; then
  for w in 1 0; do
    step "product microbenchmark (b16 shapes, batch 8), DEER_WGSL=$w"
    DEER_WGSL=$w DEER_BACKEND=webgpu timeout 180 deno run -A bench/webgpu_probe.ts matmul \
      --batch 8 2>>"$OUT/wgsl.err" | sed "s/^{/{\"wgsl\":$w,/" >>"$OUT/wgsl.jsonl"
    echo "exit ${PIPESTATUS[0]}"
  done
  for w in 1 0; do
    step "webgpu probe (b16, batch 8), DEER_WGSL=$w"
    DEER_WGSL=$w DEER_BACKEND=webgpu timeout 240 deno run -A bench/webgpu_probe.ts b16 --batch 8 \
      2>>"$OUT/wgsl.err" | sed "s/^{/{\"wgsl\":$w,/" >>"$OUT/wgsl.jsonl"
    for b in 8 32 64; do
      step "webgpu ViT-B/16 step, batch $b, DEER_WGSL=$w"
      DEER_WGSL=$w DEER_BACKEND=webgpu timeout 150 deno run -A bench/figures.ts b16 --batch "$b" \
        --steps 5 --warmup 1 2>>"$OUT/wgsl.err" | sed "s/^{/{\"wgsl\":$w,/" >>"$OUT/wgsl.jsonl"
      echo "exit ${PIPESTATUS[0]}"
    done
  done
  cat "$OUT/wgsl.jsonl"
  tail -n 5 "$OUT/wgsl.err"
  exit 0
fi
if [ "${1:-}" = short ]; then
  for b in 8 32 64; do
    step "PyTorch CUDA ViT-B/16 step, batch $b"
    timeout 40 python3 bench/vit_b16_lora_torch.py 10 2 2 --device cuda --batch "$b" \
      >>"$OUT/bench.jsonl" 2>>"$OUT/bench.err"
  done
  for b in 8 32; do
    step "webgpu ViT-B/16 step, batch $b"
    DEER_BACKEND=webgpu timeout 100 deno run -A bench/figures.ts b16 --batch "$b" --steps 3 \
      --warmup 1 >>"$OUT/bench.jsonl" 2>>"$OUT/bench.err"
    echo "exit $?"
  done
  cat "$OUT/bench.jsonl"
  tail -n 5 "$OUT/bench.err"
  exit 0
fi

if [ "$real" = 1 ]; then
  step "backend line"
  DEER_BACKEND=webgpu deno eval 'import "./lib/backend.ts";' 2>&1 | grep "deer:" | tee -a "$OUT/backend_line.txt"
  summary+=("backend: $(cat "$OUT/backend_line.txt")")

  step "webgpu tests (reference backend: cpu)"
  DEER_REQUIRE_WEBGPU=1 DEER_REFERENCE_BACKEND=cpu timeout 150 \
    deno test -A --no-check tests/webgpu_equivalence.test.ts tests/webgpu_memory.test.ts \
    >"$OUT/tests.log" 2>&1
  rc=$?
  grep -E "^(ok|FAILED) \||\.\.\. (ok|FAILED)|error" "$OUT/tests.log" | head -20
  summary+=("tests: exit $rc, $(grep -E '^(ok|FAILED) \|' "$OUT/tests.log" | tail -1)")
else
  summary+=("no real GPU adapter: webgpu tests and figures skipped")
fi

step "benchmark"
if [ "$real" = 1 ]; then
  timeout 290 deno run -A bench/main.ts --backend webgpu --only tiny,b16 --torch python3 \
    --max-wait 0 >"$OUT/bench.jsonl" 2>"$OUT/bench.err"
  echo "bench exit $?"
else
  # The PyTorch CUDA references alone (no webgpu figures).
  for b in 8 32 64; do
    PYTHONUNBUFFERED=1 timeout 120 python3 bench/vit_b16_lora_torch.py 10 2 2 --device cuda \
      --batch "$b" >>"$OUT/bench.jsonl" 2>>"$OUT/bench.err"
  done
fi
cat "$OUT/bench.jsonl"
tail -n 5 "$OUT/bench.err"
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv || true

step "summary"
for s in "${summary[@]}"; do echo "$s"; done
grep -E '"name":"(vit_lora_step|torch_vit|ratio)' "$OUT/bench.jsonl" |
  sed -E 's/.*"name":"([^"]+)".*"ms":([0-9.]+).*/\1 \2 ms/; s/.*"name":"(ratio[^"]+)","ratio":([0-9.]+).*/\1 \2/'
