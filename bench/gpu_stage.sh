#!/usr/bin/env bash
# Stages what bench/gpu_check.sh needs on an offline GPU machine into DEST (default .gpucarry/):
# the deno binary (xz), the committed toolkit (git archive of HEAD) with node_modules/ trimmed to
# the bundles Deno loads (no source maps, type declarations or browser builds), and Deno's npm
# metadata cache, so that nothing is fetched there. Run `deno task setup` first; about 39 MiB.
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
cp "$ROOT/bench/gpu_check.sh" "$DEST/gpu_check.sh"
du -sh "$DEST"/*
