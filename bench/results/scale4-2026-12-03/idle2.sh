#!/bin/bash
o=/tmp/scale4/idle2; mkdir -p $o; cd /work/wt-scale4
for i in 1 2; do for b in base2 final2; do
  echo "start $b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  bench/scale.sh --counts "512" --drivers 8 --only across --idle 12 --probes 5 --bin /tmp/scale4-bin-$b --label idle-$b-$i --out $o/$b-$i > $o/$b-$i.stdout 2> $o/$b-$i.stderr
  echo "end $b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) rc=$?" >> $o/log.txt
done; done
