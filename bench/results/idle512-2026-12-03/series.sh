#!/bin/bash
# series.sh BUILD OUT : bench/scale.sh at N = 512 across (8 drivers, idle 28 s);
# from the IDLE line on, every second for 20 s, each router thread's time on
# CPU (schedstat, ns) and context switches (threads.sh) into OUT/BUILD.s/N.
set -u
b=$1 o=$2; here=$(cd "$(dirname "$0")" && pwd); mkdir -p $o/$b.s
bin=/tmp/idle512-bin-$b
echo "start $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
/work/wt-idle512/bench/scale.sh --counts 512 --drivers 8 --only across --idle 28 --probes 5 --bin $bin --label s-$b --out $o/$b > $o/$b.stdout 2> $o/$b.stderr &
sp=$!
cli=$o/$b/across-drivers-8-512.client
for i in $(seq 1200); do grep -q '^IDLE' $cli 2>/dev/null && break; sleep 0.05; done
pids=$(for p in $(pgrep -x ffrouter); do [ "$(readlink /proc/$p/exe)" = "$bin/ffrouter" ] && echo $p; done)
echo "routers: $(echo $pids)" >> $o/log.txt
for i in $(seq 0 20); do
  date +%s.%N > $o/$b.s/$i.t; $here/threads.sh $pids > $o/$b.s/$i
  sleep 0.97
done
wait $sp
echo "end $b $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
