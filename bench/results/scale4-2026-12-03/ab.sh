#!/bin/bash
# ab.sh TAG ROUNDS BUILDS... : under one hold of the lock, builds alternating,
# bench/scale.sh --counts "$COUNTS" --drivers 8 --only across; perf stat (page
# faults, futex calls) for 3 s of the N=512 stream, 1.5 s after STREAMING.
tag=$1 rounds=$2; shift 2
o=/tmp/scale4/$tag; mkdir -p $o
cd /work/wt-scale4
for i in $(seq $rounds); do for b in "$@"; do
  d=$o/$b-$i; mkdir -p $d
  echo "start $b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  ( f=$d/across-drivers-8-512.client; for k in $(seq 3000); do grep -q '^STREAMING' $f 2>/dev/null && break; sleep 0.1; done; sleep 1.5
    perf stat -e page-faults,context-switches,syscalls:sys_enter_futex -a -o $d/perfstat.txt -- sleep 3 ) &
  bench/scale.sh --counts "${COUNTS:-1 64 512}" --drivers 8 --only across --idle 3 --probes 10 --bin /tmp/scale4-bin-$b --label $b-$i --out $d > $d.stdout 2> $d.stderr
  rc=$?
  wait
  echo "end $b $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) rc=$rc" >> $o/log.txt
done; done
