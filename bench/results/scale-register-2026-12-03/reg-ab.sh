#!/bin/bash
# one round: registered vs --no-register, one host then across
r=$1; only=${2:-local}
cd /work/main
for arm in reg ring; do
  flag=""; [ $arm = reg ] && flag=--register
  echo "$(date +%T) round $r $arm load $(cut -d' ' -f1 /proc/loadavg)"
  flock /tmp/ff-heavy.lock bash bench/scale.sh --counts "1 64 512" --drivers "0 8" --only $only --idle 3 --probes 5 --secs 3 \
     --bin /work/runs/bin-reg --out /work/runs/reg-$only-r$r-$arm --label $arm $flag > /work/runs/reg-$only-r$r-$arm.log 2>&1
  grep -h "agg_mb_per_s\|FAIL\|error" /work/runs/reg-$only-r$r-$arm.log | head -3
done
