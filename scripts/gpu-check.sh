#!/usr/bin/env bash
# GPU check: runs on a GPU machine with no Rust toolchain, from a `cuda`
# binary built elsewhere (`make build-cuda`, then `make gpu-bundle` copies it
# to .gpu/distill). Writes a report to $REPORT (default gpu-check/report.txt):
#   1. the driver and device (nvidia-smi);
#   2. every custom op and two whole networks against the CPU
#      (`distill check-device --device cuda`; tolerances printed per check):
#      on cuda these are distill's own kernels (src/model/cuda/kernels.cu:
#      im2col/col2im, max-pool, the bias+ReLU(+pool) epilogue around cuBLAS,
#      the fused KD loss), unverified until this step passes on a GPU;
#   3. cache build -> train-student end to end on cuda, beside the same on cpu;
#   4. the step benchmark: one training epoch per student on cuda and on cpu;
#   5. where the full Fashion-MNIST is in $BENCH_DATA and python3 has torch:
#      scripts/bench_pytorch.py --device cuda, distill beside a PyTorch loop
#      on the GPU, one epoch per row (skip with BENCH_DATA=none).
# Before 2, the headers for dfdx's run-time-compiled kernels are put where
# the binary looks for them (.gpu/nvrtc.tgz, .gpu/nvrtc-paths from
# `make gpu-bundle`), unless those paths exist on this machine.
# Exits non-zero when the device check or a run fails.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.gpu/distill}
DATA=${DATA:-data/fashion-mnist-small}
TEACHER=${TEACHER:-data/teachers/fashion-cnn}
OUTDIR=${OUTDIR:-gpu-check}
REPORT=${REPORT:-$OUTDIR/report.txt}
STUDENTS=${STUDENTS:-mlp:784-128-10 mlp:784-800-800-10 cnn:c8-p-c16-p-10 cnn:c32-p-c64-p-f128-10}
mkdir -p "$OUTDIR"
: > "$REPORT"
: > "$OUTDIR/check-device.txt"
say() { echo "$*" | tee -a "$REPORT"; }
# Seconds since $1 (a `date +%s.%N`), and a/b, without bc (not on every image).
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
# Every binary call has a limit, so a hung device cannot eat the machine's time.
T="timeout ${STEP_TIMEOUT:-180}"
status=0

# cuBLAS and NVRTC ship inside PyTorch's environment on the GPU machines.
if [ -z "${CUBLAS_DIR:-}" ]; then
  # PyTorch's environment lives under /opt or /usr; search all of / only if not.
  lib=$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)
  [ -n "$lib" ] || lib=$(find / -name 'libcublas.so.13' 2>/dev/null | head -1)
  [ -z "$lib" ] || CUBLAS_DIR=$(dirname "$lib")
fi
export LD_LIBRARY_PATH=${CUBLAS_DIR:+$CUBLAS_DIR:}${LD_LIBRARY_PATH:-}

say "== gpu-check $(date -u +%FT%TZ), binary $BIN, data $DATA"
if [ ! -x "$BIN" ]; then
  say "no binary at $BIN: run 'make build-cuda gpu-bundle' on a build machine first"
  exit 2
fi
say "== 1. device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$REPORT" || status=1

if [ -f .gpu/nvrtc-paths ] && [ -f .gpu/nvrtc.tgz ]; then
  nv=$(mkdir -p "$OUTDIR/nvrtc" && cd "$OUTDIR/nvrtc" && pwd)
  tar -C "$nv" -xzf .gpu/nvrtc.tgz
  while IFS='=' read -r key path; do
    [ -n "$key" ] || continue
    if [ -e "$path" ]; then
      say "nvrtc $key headers: $path exists here, left as it is"
    elif mkdir -p "$(dirname "$path")" && ln -s "$nv/$key" "$path"; then
      say "nvrtc $key headers: linked at $path"
    else
      say "nvrtc $key headers: could not link $path (kernels compiled at run time may fail)"
    fi
  done < .gpu/nvrtc-paths
else
  say "no .gpu/nvrtc.tgz: kernels compiled at run time will look for headers at the build machine's paths"
fi

say "== 2. ops against the cpu"
$T "$BIN" check-device --device cuda 2>&1 | tee -a "$OUTDIR/check-device.txt" | tee -a "$REPORT"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  status=1
  if grep -q 'UNSUPPORTED_PTX_VERSION' "$OUTDIR/check-device.txt"; then
    say "hint: the kernels' PTX is newer than this driver: build with the CUDA toolkit the driver supports (shared GPU notes)"
  fi
fi

say "== 3. cache build -> train-student, cuda beside cpu"
for dev in cpu cuda; do
  d=$OUTDIR/e2e-$dev
  rm -rf "$d"
  t0=$(date +%s.%N)
  if $T "$BIN" cache build --device "$dev" --teacher "$TEACHER" --data "$DATA" --split train \
       -T 4 --out "$d/cache-train" --quiet >>"$REPORT" 2>&1 &&
     $T "$BIN" cache build --device "$dev" --teacher "$TEACHER" --data "$DATA" --split test \
       -T 4 --out "$d/cache-test" --quiet >>"$REPORT" 2>&1 &&
     $T "$BIN" train --device "$dev" --data "$DATA" --student mlp:784-128-10 \
       --cache "$d/cache-train" --test-cache "$d/cache-test" -T 1 --alpha 0.1 \
       --epochs 3 --seed 0 --quiet --out "$d/student" 2>&1 | tee -a "$REPORT"; then
    say "$dev: end to end in $(since "$t0") s"
  else
    say "$dev: end to end FAILED"; status=1
  fi
done
if [ -f "$OUTDIR/e2e-cpu/cache-train/manifest.json" ] && [ -f "$OUTDIR/e2e-cuda/cache-train/manifest.json" ]; then
  say "fidelity and teacher accuracy of the two caches (cpu, cuda):"
  grep -h -o '"mean_kl": *[^,]*\|"accuracy": *[^,]*' \
    "$OUTDIR/e2e-cpu/cache-train/manifest.json" "$OUTDIR/e2e-cuda/cache-train/manifest.json" | tee -a "$REPORT"
fi

say "== 4. one training epoch per student (samples/s from the wall time)"
n=$("$BIN" data info --data "$DATA" | sed -n 's/^train: \([0-9]*\) samples.*/\1/p')
for s in $STUDENTS; do
  for dev in cpu cuda; do
    t0=$(date +%s.%N)
    if $T "$BIN" train --device "$dev" --data "$DATA" --student "$s" --epochs 1 --seed 0 \
         --quiet --out "$OUTDIR/bench-$dev-${s//:/-}" >/dev/null 2>>"$REPORT"; then
      dt=$(since "$t0")
      say "$s on $dev: ${dt} s for $n samples ($(ratio "$n" "$dt") samples/s, process start included)"
    else
      say "$s on $dev: FAILED"; status=1
    fi
  done
done
BENCH_DATA=${BENCH_DATA:-data/fashion-mnist}
say "== 5. distill beside PyTorch on the GPU ($BENCH_DATA)"
if [ "$BENCH_DATA" = none ] || ! ls "$BENCH_DATA"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  say "skipped: no training images in $BENCH_DATA"
elif ! python3 -c 'import torch, numpy; assert torch.cuda.is_available()' 2>>"$REPORT"; then
  say "skipped: python3 has no torch with CUDA here"
else
  timeout "${BENCH_TIMEOUT:-300}" python3 scripts/bench_pytorch.py --bin "$BIN" --data "$BENCH_DATA" \
    --device cuda --rounds "${BENCH_ROUNDS:-2}" --threads "$(nproc)" \
    --rows "${BENCH_ROWS:-mlp128,mlp128kd,mlp800,cnn8,cnn32,resnet8,teacher}" \
    --out "$OUTDIR/bench-pytorch-cuda" >>"$OUTDIR/bench-pytorch-cuda.log" 2>&1
  rc=$?
  tail -n 40 "$OUTDIR/bench-pytorch-cuda.log" | tee -a "$REPORT"
  if [ -f "$OUTDIR/bench-pytorch-cuda/table.md" ]; then
    say "table so far:"; tee -a "$REPORT" < "$OUTDIR/bench-pytorch-cuda/table.md"
  fi
  [ "$rc" -eq 0 ] || { say "bench exit $rc (124: stopped at BENCH_TIMEOUT)"; status=1; }
fi
say "== done, status $status"
exit $status
