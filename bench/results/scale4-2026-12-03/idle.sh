#!/bin/bash
o=/tmp/scale4/idle; mkdir -p $o; cd /work/wt-scale4
for b in base2 final2; do
  echo "start $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  bench/scale.sh --counts "64 512" --drivers 8 --only across --idle 12 --probes 10 --bin /tmp/scale4-bin-$b --label idle-$b --out $o/$b > $o/$b.stdout 2> $o/$b.stderr
  echo "end $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) rc=$?" >> $o/log.txt
done
