#!/usr/bin/env bash
# Stages what bench/gpu_check.sh needs on an offline GPU machine into DEST (default .gpucarry/):
# the deno binary (xz), the committed toolkit (git archive of HEAD) with node_modules/ trimmed to
# the bundles Deno loads (no source maps, type declarations or browser builds), and Deno's npm
# metadata cache, so that nothing is fetched there, and Debian's Vulkan/EGL loaders in DEST/.gl
# (below). Run `deno task setup` first; about 40 MiB.
# DEST/gpu_check.sh is the check to run there (see its header); .gpucarry/ is ignored by git, so a
# tool that copies the working tree must be told to carry it.
#
# Usage: bash bench/gpu_stage.sh [DEST]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=$(realpath -m "${1:-$ROOT/.gpucarry}")
# The deno that stages is the one shipped: the one on PATH, else the one .ci/run installs.
if ! command -v deno >/dev/null && [ -x "$ROOT/.tools/deno/bin/deno" ]; then
  PATH="$ROOT/.tools/deno/bin:$PATH"
fi
if ! command -v deno >/dev/null; then
  echo "gpu_stage.sh: no deno on PATH (nor $ROOT/.tools/deno/bin/deno): install it, e.g. by" \
    "running the README's test command once, or put deno on PATH" >&2
  exit 1
fi
if [ ! -d "$ROOT/node_modules/.deno" ]; then
  echo "gpu_stage.sh: $ROOT/node_modules is missing: run \`deno task setup\` first" >&2
  exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DEST" "$TMP/repo"
cd "$ROOT"
git archive HEAD | tar -x -C "$TMP/repo"
tar -cf - node_modules | tar -xf - -C "$TMP/repo"
(
  cd "$TMP/repo/node_modules/.deno"
  for d in */node_modules/@tensorflow/*/dist; do
    find "$d" -mindepth 1 -maxdepth 1 ! -name '*.node.js' -exec rm -rf {} +
  done
  find . \( -name '*.map' -o -name '*.d.ts' \) -delete
)
tar -czf "$DEST/repo.tar.gz" -C "$TMP" repo
DENO_BIN=$(realpath "$(command -v deno)")
# Compressing takes minutes: an existing deno.xz newer than the binary is kept.
if [ ! "$DEST/deno.xz" -nt "$DENO_BIN" ]; then xz -T0 -9 -c "$DENO_BIN" >"$DEST/deno.xz"; fi
NPM_CACHE=$(deno info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["npmCache"])')
(cd "$NPM_CACHE/.." && find npm -name registry.json | tar -czf "$DEST/denodir.tar.gz" -T -)
# The Vulkan/EGL loaders, for a GPU machine whose image lacks libvulkan.so.1 (gpu_check.sh unpacks
# them only then): Debian's amd64 packages, downloaded with this machine's apt sources into
# DEST/.gl. GPU_STAGE_LOADERS=0 skips them; without apt-get or a reachable mirror they are left out,
# saying so (the check then names the missing loader).
LOADERS=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
if [ "${GPU_STAGE_LOADERS:-1}" = 1 ]; then
  if ls "$DEST"/.gl/libvulkan1_*.deb >/dev/null 2>&1; then
    echo "gpu_stage.sh: keeping the loaders in $DEST/.gl"
  elif command -v apt-get >/dev/null; then
    mkdir -p "$DEST/.gl" "$TMP/lists/partial" "$TMP/cache/archives/partial"
    apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$TMP/lists"
      "-oDir::Cache=$TMP/cache" -oDebug::NoLocking=1)
    if apt-get "${apt[@]}" -qq update >"$TMP/apt.log" 2>&1 &&
      (cd "$DEST/.gl" && apt-get "${apt[@]}" -qq download "${LOADERS[@]}") >>"$TMP/apt.log" 2>&1; then
      echo "gpu_stage.sh: Vulkan/EGL loaders in $DEST/.gl: $(cd "$DEST/.gl" && echo *.deb)"
    else
      echo "gpu_stage.sh: could not download the Vulkan/EGL loaders (${LOADERS[*]}), left out:" \
        "$(tail -n 2 "$TMP/apt.log" | tr '\n' ' ')" >&2
      rm -f "$DEST"/.gl/*.deb
    fi
  else
    echo "gpu_stage.sh: no apt-get here: the Vulkan/EGL loaders are left out (GPU_STAGE_LOADERS=0" \
      "silences this)" >&2
  fi
fi
cp "$ROOT/bench/gpu_check.sh" "$DEST/gpu_check.sh"
du -sh "$DEST"/* "$DEST"/.gl 2>/dev/null || true
