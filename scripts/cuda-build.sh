#!/usr/bin/env bash
# Builds (or checks) distill's `cuda` feature: `make build-cuda` runs it.
#   scripts/cuda-build.sh [build|check|test-build|host-check] [extra cargo args...]
#
# Every mode first runs the kernels' host emulation
# (src/model/cuda/host_check.cpp, any C++17 compiler): it checks the index
# arithmetic and maths of kernels.cu on the CPU; `host-check` stops there.
#
# distill's own CUDA kernels (src/model/cuda/) need three things dfdx 0.13
# keeps crate-private: the cudarc device behind `Cuda`, a tensor's device
# memory, and a tensor made from device memory (dfdx issue #500). The patch
# src/model/cuda/dfdx-0.13.0-access.patch adds them as public methods and
# nothing else. Rather than vendor dfdx for every build, this script builds
# the cuda feature from a generated workspace in target/cuda/ws: symlinks to
# this checkout's sources, a copy of Cargo.toml with a `[patch.crates-io]`
# entry for the patched dfdx, and a copy of Cargo.lock that cargo may update
# there (only dfdx's source changes). The CPU build, Cargo.toml and Cargo.lock
# of the checkout are untouched.
#
# Needs nvcc (a CUDA 12 or 13 toolkit) on PATH; on a machine without one it
# sources ../shared/tools/cuda-env.sh (CUDA_ENV), which assembles CUDA 13.0.
# The binary lands in target/cuda/release/distill, where `make gpu-bundle`
# looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-build}
shift || true
case "$MODE" in
  build|check|test-build|host-check) ;;
  *) echo "cuda-build: unknown mode '$MODE' (build, check, test-build, host-check)" >&2; exit 2 ;;
esac
CARGO=${CARGO:-cargo}
CUDA_ENV=${CUDA_ENV:-../shared/tools/cuda-env.sh}
TARGET=$ROOT/target/cuda
WS=$TARGET/ws
DFDX_VERSION=0.13.0
PATCHED=$TARGET/dfdx-$DFDX_VERSION-patched
PATCH=$ROOT/src/model/cuda/dfdx-$DFDX_VERSION-access.patch

CXX=${CXX:-c++}
if command -v "$CXX" >/dev/null; then
  mkdir -p "$TARGET"
  "$CXX" -std=c++17 -O1 -w -o "$TARGET/host_check" "$ROOT/src/model/cuda/host_check.cpp"
  "$TARGET/host_check"
else
  echo "cuda-build: no C++ compiler ($CXX): skipping the kernels' host check" >&2
  [ "$MODE" != host-check ] || exit 1
fi
[ "$MODE" != host-check ] || exit 0

if ! command -v nvcc >/dev/null && [ -f "$CUDA_ENV" ]; then
  # shellcheck disable=SC1090
  source "$CUDA_ENV"
fi
command -v nvcc >/dev/null || { echo "cuda-build: nvcc not found: install a CUDA 12 or 13 toolkit or set CUDA_ENV" >&2; exit 1; }

"$CARGO" fetch --locked
DFDX_SRC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "dfdx-$DFDX_VERSION" | head -1)
[ -n "$DFDX_SRC" ] || { echo "cuda-build: dfdx-$DFDX_VERSION source not found after cargo fetch" >&2; exit 1; }

# The patched dfdx, rebuilt when the patch changes.
stamp=$(sha256sum "$PATCH" | cut -c1-16)
if [ ! -f "$PATCHED/.distill-patch-$stamp" ]; then
  rm -rf "$PATCHED.tmp" "$PATCHED"
  mkdir -p "$TARGET"
  cp -r "$DFDX_SRC" "$PATCHED.tmp"
  chmod -R u+w "$PATCHED.tmp"
  patch -s -p1 -d "$PATCHED.tmp" < "$PATCH"
  touch "$PATCHED.tmp/.distill-patch-$stamp"
  mv "$PATCHED.tmp" "$PATCHED"
fi

# The generated workspace.
mkdir -p "$WS"
for entry in src build.rs benches tests examples data; do
  [ -e "$ROOT/$entry" ] && ln -sfn "$ROOT/$entry" "$WS/$entry"
done
{
  cat "$ROOT/Cargo.toml"
  printf '\n# Added by scripts/cuda-build.sh for the cuda build only.\n[patch.crates-io]\ndfdx = { path = "%s" }\n' "$PATCHED"
} > "$WS/Cargo.toml.new"
cmp -s "$WS/Cargo.toml.new" "$WS/Cargo.toml" 2>/dev/null || mv "$WS/Cargo.toml.new" "$WS/Cargo.toml"
rm -f "$WS/Cargo.toml.new"
# Start from the checkout's lock file each time so versions never drift.
cp "$ROOT/Cargo.lock" "$WS/Cargo.lock"

export CARGO_TARGET_DIR=$TARGET
case "$MODE" in
  build) "$CARGO" build --offline --release --features cuda --manifest-path "$WS/Cargo.toml" "$@" ;;
  check) "$CARGO" check --offline --features cuda --manifest-path "$WS/Cargo.toml" "$@" ;;
  test-build) "$CARGO" build --offline --release --tests --features cuda --manifest-path "$WS/Cargo.toml" "$@" ;;
  *) echo "cuda-build: unknown mode '$MODE' (build, check, test-build, host-check)" >&2; exit 2 ;;
esac
