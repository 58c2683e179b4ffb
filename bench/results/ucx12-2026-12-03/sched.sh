#!/bin/bash
# sched.sh TRANSPORT OUTDIR [BIN]: run allreduce 400 iters over TRANSPORT, record sched switches 2 s
t=$1; out=$2; bin=${3:-/work/target-stream/release}
mkdir -p $out
cd /work/wt-ucx12
bench/allreduce_hosts.sh --transports "$t" --rounds 1 --iters 300 --no-tf --bin $bin --out $out/run > $out/run.log 2>&1 &
job=$!
for _ in $(seq 1200); do pgrep -f "allreduce 7400000 300 3" >/dev/null && break; sleep 0.1; done
sleep 3
perf record -q -e sched:sched_switch -e sched:sched_wakeup -g -a -o $out/sched.data -- sleep 1.5 2>/dev/null
perf record -q -e cpu-clock -F 999 -g -a -o $out/cpu.data -- sleep 1.5 2>/dev/null
wait $job; echo rc $?
grep "round 1" $out/run.log
