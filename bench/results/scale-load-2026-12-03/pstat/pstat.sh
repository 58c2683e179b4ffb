#!/bin/bash
# pstat.sh: futex syscalls during N=512 drivers=8 streaming, new vs opt, 2 rounds
o=/tmp/scale3/pstat; mkdir -p $o; cd /work/wt-scale3
for i in 1 2; do for b in new opt; do
  d=$o/$b-$i; mkdir -p $d
  ( f=$d/across-drivers-8-512.client; for k in $(seq 3000); do grep -q '^STREAMING' $f 2>/dev/null && break; sleep 0.1; done; sleep 1.5
    perf stat -e syscalls:sys_enter_futex,syscalls:sys_enter_futex_waitv,context-switches -a -o $d/perfstat.txt -- sleep 3 ) &
  bench/scale.sh --counts 512 --drivers 8 --only across --idle 3 --probes 5 --bin /tmp/scale3-bin-$b --label $b-$i --out $d > $d.stdout 2> $d.stderr
  wait
  echo "$b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log
done; done
