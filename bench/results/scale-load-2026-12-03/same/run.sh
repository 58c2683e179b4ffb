#!/bin/bash
# same.sh: same-host ff suite (bench/run.sh --quick, no UCX), base / final / nonotify alternating, 4 rounds
o=/tmp/scale3/same; mkdir -p $o; cd /work/wt-scale3
echo "start $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log
for i in 1 2 3 4; do for v in base final nonotify; do
  FF_BENCH_SKIP_UCX=1 bench/run.sh --quick --bin /tmp/scale3-bin-$v --out $o/$v-$i > $o/$v-$i.out 2>&1
  echo "$v $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log
done; done
echo DONE >> $o.log
