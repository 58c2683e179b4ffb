#!/bin/bash
# connect latency under load at N=512 across, 100 probes per round, with router connect traces
cd /work/main
export RUST_LOG=warn,ff_connect=debug
for r in 1 2 3; do
  flock /tmp/ff-heavy.lock bash -c "uptime; bench/scale.sh --counts 512 --drivers 8 --only across --secs 8 --idle 3 --probes 100 --bin /work/p99b --out /work/p99b/r$r --label p99b 2> /work/p99b/r$r.trace; uptime"
  grep -rh PROBED /work/p99b/r$r/*.client
  grep -h agg_mb /work/p99b/r$r/results.csv
done
