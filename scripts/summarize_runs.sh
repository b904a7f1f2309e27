#!/bin/sh
# summarize_runs.sh RUN_DIR...: one line per setting, over its seeds.
#
# Runs are grouped by their directory name with the trailing `-sN` (the
# seed) removed; each line gives the mean and the spread (max - min) of the
# test accuracy after the last epoch, of the validation accuracy, and the
# seeds' test figures, read from each run's `model.json` (the card that
# `distill train` writes). Used by `make distill-best`; plain POSIX sh + awk.
set -eu
if [ "$#" -eq 0 ]; then
  echo "usage: $0 RUN_DIR..." >&2
  exit 2
fi
rows=$(for dir in "$@"; do
  card="$dir/model.json"
  if [ ! -f "$card" ]; then
    echo "$0: $card is missing (did the run finish?)" >&2
    exit 1
  fi
  name=$(basename "$dir" | sed 's/-s[0-9][0-9]*$//')
  test=$(grep -o '"test_accuracy": *[0-9.eE+-]*' "$card" | head -n 1 | sed 's/.*: *//')
  val=$(grep -o '"val_accuracy": *[0-9.eE+-]*' "$card" | head -n 1 | sed 's/.*: *//')
  if [ -z "$test" ]; then
    echo "$0: $card has no test_accuracy" >&2
    exit 1
  fi
  echo "$name ${test} ${val:-nan}"
done) || exit 1
printf '%s\n' "$rows" | awk '
  {
    if (!($1 in n)) { order[++groups] = $1; lo[$1] = $2; hi[$1] = $2 }
    n[$1]++; t[$1] += $2; v[$1] += $3
    if ($2 < lo[$1]) lo[$1] = $2
    if ($2 > hi[$1]) hi[$1] = $2
    seeds[$1] = seeds[$1] sprintf(" %.2f", 100 * $2)
  }
  END {
    printf "%-48s %5s %10s %8s %10s  %s\n", "setting", "seeds", "test %", "spread", "val %", "per seed"
    for (i = 1; i <= groups; i++) {
      g = order[i]
      printf "%-48s %5d %10.2f %8.2f %10.2f %s\n", g, n[g], 100 * t[g] / n[g], 100 * (hi[g] - lo[g]), 100 * v[g] / n[g], seeds[g]
    }
  }'
