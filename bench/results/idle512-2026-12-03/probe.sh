#!/bin/bash
# probe.sh BUILD OUT : bench/scale.sh at N = 512 across (8 drivers), idle 28 s;
# from 6 s into the idle time: per-thread CPU ticks and context switches of
# both routers over 10 s (threads.sh before/after), then perf record -g of
# both routers for 8 s.
set -u
b=$1 o=$2; here=$(cd "$(dirname "$0")" && pwd); mkdir -p $o
bin=/tmp/idle512-bin-$b
echo "start $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
/work/wt-idle512/bench/scale.sh --counts 512 --drivers 8 --only across --idle 28 --probes 5 --bin $bin --label p-$b --out $o/$b > $o/$b.stdout 2> $o/$b.stderr &
sp=$!
cli=$o/$b/across-drivers-8-512.client
for i in $(seq 1200); do grep -q '^IDLE' $cli 2>/dev/null && break; sleep 0.1; done
pids=$(for p in $(pgrep -x ffrouter); do [ "$(readlink /proc/$p/exe)" = "$bin/ffrouter" ] && echo $p; done)
echo "routers: $pids" >> $o/log.txt
sleep 6
$here/threads.sh $pids > $o/$b.threads0; date +%s.%N > $o/$b.t0
sleep 10
$here/threads.sh $pids > $o/$b.threads1; date +%s.%N > $o/$b.t1
perf record -F 2999 --call-graph dwarf,16384 -o $o/$b.perf.data -p $(echo $pids | tr ' ' ,) -- sleep 8 > $o/$b.perf.log 2>&1
wait $sp
echo "end $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
