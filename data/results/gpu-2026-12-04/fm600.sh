#!/usr/bin/env bash
# Issue-15 experiment on the GPU: function matching from a mixup=1 view set (32 views) over E epochs
# against the hard-label shift=1,mixup=1 baseline trained as long, 3 seeds each, all six at once.
set -u
B=.gpu/distill; D=data/fashion-mnist; TE=data/teachers/fashion-cnn-long-val
export LD_LIBRARY_PATH=$(dirname "$(find /opt /usr -name libcublas.so.13 2>/dev/null | head -1)"):${LD_LIBRARY_PATH:-}
W=/tmp/fm; mkdir -p $W/runs; L=$OUT/log.txt
E=${E:-600}; LIMIT=${LIMIT:-470}
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $L 2>&1
$B cache build --device cuda --teacher $TE --data $D --split test -T 4 --encoding f16 --out $W/test >> $L 2>&1
$B cache build --device cuda --teacher $TE --data $D --split train -T 4 --encoding f16 --augment mixup=1 --views 32 --out $W/views-mixup1-k32 >> $L 2>&1
echo "caches built at +$(( $(date +%s)-t0 )) s" >> $L
for s in 0 1 2; do
  RAYON_NUM_THREADS=2 timeout $LIMIT $B train --device cuda -q --data $D --student cnn:c8-p-c16-p-10 --epochs $E --seed $s --val-seed 0 \
    --cache $W/views-mixup1-k32 --test-cache $W/test -T 1 --alpha 0 --out $W/runs/fm-mix1-e$E-s$s > $W/fm-s$s.log 2>&1 &
  RAYON_NUM_THREADS=2 timeout $LIMIT $B train --device cuda -q --data $D --student cnn:c8-p-c16-p-10 --epochs $E --seed $s --val-seed 0 \
    --augment shift=1,mixup=1 --out $W/runs/hardmix-e$E-s$s > $W/hard-s$s.log 2>&1 &
done
while [ -n "$(jobs -r)" ]; do
  sleep 30
  echo "+$(( $(date +%s)-t0 )) s: $(for f in $W/runs/*/metrics.jsonl; do echo -n "$(basename $(dirname $f)):$(wc -l < $f) "; done)" >> $L
done
wait
for f in $W/*.log; do echo "== $f"; cat $f; done >> $L
tar -C $W -czf $OUT/runs.tgz runs fm-s0.log
cat $L
