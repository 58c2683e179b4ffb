#!/bin/bash
# turn2.sh: FF_ROUTER_TURN default vs 131072, drivers=8, counts 1 64 512, alternating, 3 rounds (opt build)
o=/tmp/scale3/turn2; mkdir -p $o; cd /work/wt-scale3
for i in 1 2 3; do
  for t in default 131072; do
    echo "turn $t round $i start $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log
    if [ $t = default ]; then unset FF_ROUTER_TURN; else export FF_ROUTER_TURN=$t; fi
    bench/scale.sh --counts '1 64 512' --drivers 8 --only across --idle 3 --probes 10 --bin /tmp/scale3-bin-opt --label turn-$t-$i --out $o/turn-$t-$i > $o/turn-$t-$i.stdout 2> $o/turn-$t-$i.stderr
    echo "   end $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log
  done
done
echo DONE >> $o.log
