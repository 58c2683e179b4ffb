#!/bin/bash
# connect latency under load at N=512 across, 100 probes per round, 3 rounds
cd /work/main
for r in 1 2 3; do
  uptime
  flock /tmp/ff-heavy.lock bench/scale.sh --counts 512 --drivers 8 --only across --secs 8 --idle 2 --probes 100 --bin /work/p99 --out /work/p99/r$r --label p99
  grep -h PROBED /work/p99/r$r/*.out 2>/dev/null || grep -rh PROBED /work/p99/r$r | head
done
