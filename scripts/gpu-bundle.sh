#!/usr/bin/env bash
# Packs what a GPU machine without Rust needs to run the `cuda` binary
# (`make gpu-bundle` runs it after `make build-cuda`), into .gpu/
# (git-ignored; name it where the checkout is copied):
#   .gpu/distill      the binary, stripped (69 MB with debug info, ~10 MB
#                     without; a GPU machine may take a size-limited copy of
#                     the checkout);
#   .gpu/nvrtc.tgz    the headers that dfdx's run-time-compiled kernels
#                     include (non-contiguous reshape, concat, stack go
#                     through NVRTC): the CUDA include folder, without CCCL,
#                     and dfdx's four .cuh files;
#   .gpu/nvrtc-paths  the two absolute paths the binary was built to read
#                     them from (`include=`, `out=`); scripts/gpu-check.sh
#                     puts the headers back at those paths.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/cuda/release/distill}
CUDA_ENV=${CUDA_ENV:-../shared/tools/cuda-env.sh}
[ -x "$BIN" ] || { echo "gpu-bundle: no binary at $BIN: run make build-cuda first" >&2; exit 1; }
mkdir -p .gpu
if command -v strip >/dev/null; then
  strip -o .gpu/distill "$BIN"
else
  cp "$BIN" .gpu/distill
fi

# dfdx's build script bakes in $CUDA_ROOT/include and its own OUT_DIR.
if [ -z "${CUDA_ROOT:-}" ] && [ -f "$CUDA_ENV" ]; then
  # shellcheck disable=SC1090
  source "$CUDA_ENV"
fi
include=""
if [ -n "${CUDA_ROOT:-}" ] && grep -a -q -F "$CUDA_ROOT/include" "$BIN"; then
  include=$CUDA_ROOT/include
fi
out=""
for d in target/cuda/release/build/dfdx-*/out; do
  [ -d "$d" ] || continue
  abs=$(cd "$d" && pwd)
  if grep -a -q -F "$abs" "$BIN"; then out=$abs; fi
done
if [ -z "$include" ] || [ -z "$out" ]; then
  echo "gpu-bundle: could not find the NVRTC include paths in $BIN (CUDA_ROOT='${CUDA_ROOT:-}');" \
       "the binary is bundled, kernels compiled at run time may not find their headers" >&2
  rm -f .gpu/nvrtc.tgz .gpu/nvrtc-paths
  exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/include" "$stage/out"
(cd "$include" && tar --exclude=./cccl -cf - .) | (cd "$stage/include" && tar -xf -)
cp "$out"/*.cuh "$stage/out/"
tar -C "$stage" -czf .gpu/nvrtc.tgz include out
printf 'include=%s\nout=%s\n' "$include" "$out" > .gpu/nvrtc-paths
echo "gpu-bundle: .gpu/distill ($(du -h .gpu/distill | cut -f1)), .gpu/nvrtc.tgz ($(du -h .gpu/nvrtc.tgz | cut -f1)) for $include and $out"
