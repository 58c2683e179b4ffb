#!/bin/bash
cd /work/main
for r in 1 2; do for nv in 0 -5; do
  echo "$(date +%T) round $r nice $nv load $(cut -d' ' -f1 /proc/loadavg)"
  flock /tmp/ff-heavy.lock bash bench/scale.sh --counts "1 64 512" --drivers "0 8" --only across --idle 3 --probes 5 --secs 3 \
     --bin /work/runs/bin-nice --router-flags "--nice $nv" --out /work/runs/nice5-r$r-n$nv --label nice$nv > /work/runs/nice5-r$r-n$nv.log 2>&1
  grep -h RESULT /work/runs/nice5-r$r-n$nv/*.server | sed 's/mode=scale //; s/size=65536 secs=3.0. //' | cut -c1-90
done; done
