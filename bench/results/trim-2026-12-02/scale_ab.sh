#!/bin/bash
# alternating scale runs: trim, main, x3
cd /work/wt-trim
for r in 1 2 3; do
  for v in trim main; do
    b=$([ $v = trim ] && echo /work/target-trim/release || echo /work/target-trim-base/release)
    echo "$v round $r start $(date -u +%T) $(uptime)" >> /tmp/scale-ab-load.txt
    bench/scale.sh --counts "1 64 256" --size 65536 --secs 3 --idle 12 --probes 20 --cap 100 --label $v --bin $b --out /tmp/scale-ab/$v-$r  # copied here as scale-$v-$r > /tmp/scale-ab-$v-$r.log 2>&1
  done
done
echo "end $(date -u +%T) $(uptime)" >> /tmp/scale-ab-load.txt
