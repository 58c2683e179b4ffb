#!/bin/bash
# busy.sh OUT: bench/scale.sh --counts "1 64 512" --drivers 8 --only across,
# once per build (main, then the nap backoff), under the heavy lock.
o=$1; mkdir -p $o
for b in new fix; do
  echo "start $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  flock /tmp/ff-heavy.lock /work/wt-idle512/bench/scale.sh --counts "1 64 512" --drivers 8 --only across --bin /tmp/idle512-bin-$b --label busy-$b --out $o/$b > $o/$b.stdout 2> $o/$b.stderr
  echo "end $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
done
