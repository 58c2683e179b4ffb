#!/bin/bash
# Does N=512 local, 8 drivers, crawl when a big copy runs beside it?
cd /work/main
B=/work/crawl/bin; mkdir -p $B; cp -a /work/target/release/ffrouter /work/target/release/ffbench $B/
for r in plain cp1 cp2 plain2 cp3; do
  rm -rf /work/crawl/copy
  case $r in cp*) (cp -a /work/target-ucx64 /work/crawl/copy &) ;; esac
  sleep 1
  echo "== $r $(uptime)"
  flock /tmp/ff-heavy.lock bench/scale.sh --counts 512 --drivers 8 --only local --idle 3 --probes 2 --secs 3 --bin $B --out /work/crawl/$r --label crawl > /dev/null 2>&1
  grep -h agg_mb /work/crawl/$r/results.csv
  pkill -f 'cp -a /work/target-ucx64' ; sleep 1
done
rm -rf /work/crawl/copy
