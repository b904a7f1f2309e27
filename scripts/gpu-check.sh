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
#   4. the step benchmark: one training epoch per student on cuda and on cpu.
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
status=0

# cuBLAS and NVRTC ship inside PyTorch's environment on the GPU machines.
if [ -z "${CUBLAS_DIR:-}" ]; then
  CUBLAS_DIR=$(dirname "$(find / -name 'libcublas.so.13' 2>/dev/null | head -1)" 2>/dev/null)
fi
export LD_LIBRARY_PATH=${CUBLAS_DIR:+$CUBLAS_DIR:}${LD_LIBRARY_PATH:-}

say "== gpu-check $(date -u +%FT%TZ), binary $BIN, data $DATA"
if [ ! -x "$BIN" ]; then
  say "no binary at $BIN: run 'make build-cuda gpu-bundle' on a build machine first"
  exit 2
fi
say "== 1. device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$REPORT" || status=1

say "== 2. ops against the cpu"
"$BIN" check-device --device cuda 2>&1 | tee -a "$OUTDIR/check-device.txt" | tee -a "$REPORT"
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
  if "$BIN" cache build --device "$dev" --teacher "$TEACHER" --data "$DATA" --split train \
       -T 4 --out "$d/cache-train" --quiet >>"$REPORT" 2>&1 &&
     "$BIN" cache build --device "$dev" --teacher "$TEACHER" --data "$DATA" --split test \
       -T 4 --out "$d/cache-test" --quiet >>"$REPORT" 2>&1 &&
     "$BIN" train --device "$dev" --data "$DATA" --student mlp:784-128-10 \
       --cache "$d/cache-train" --test-cache "$d/cache-test" -T 1 --alpha 0.1 \
       --epochs 3 --seed 0 --quiet --out "$d/student" 2>&1 | tee -a "$REPORT"; then
    say "$dev: end to end in $(echo "$(date +%s.%N) - $t0" | bc) s"
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
    if "$BIN" train --device "$dev" --data "$DATA" --student "$s" --epochs 1 --seed 0 \
         --quiet --out "$OUTDIR/bench-$dev-${s//:/-}" >/dev/null 2>>"$REPORT"; then
      dt=$(echo "$(date +%s.%N) - $t0" | bc)
      say "$s on $dev: ${dt} s for $n samples ($(echo "$n / $dt" | bc) samples/s, process start included)"
    else
      say "$s on $dev: FAILED"; status=1
    fi
  done
done
say "== done, status $status"
exit $status
