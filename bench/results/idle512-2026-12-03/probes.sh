#!/bin/bash
# probes.sh OUT: connect latency under load at 512 (PROBES, default 20), the nap
# backoff (fix) vs the same build with FF_ROUTER_NAP_MAX_MS=200 (fix200,
# i.e. main's naps), alternating, rounds $ROUNDS (default 1 2), under the heavy lock.
o=$1; mkdir -p $o
for i in ${ROUNDS:-1 2}; do for b in fix fix200; do
  echo "start $b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  flock /tmp/ff-heavy.lock /work/wt-idle512/bench/scale.sh --counts 512 --drivers 8 --only across --idle 3 --probes ${PROBES:-20} --bin /tmp/idle512-bin-$b --label pr-$b --out $o/$b-$i > $o/$b-$i.stdout 2> $o/$b-$i.stderr
done; done
