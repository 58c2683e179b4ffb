#!/bin/bash
cd /work/main
B=/work/crawl/bin
for a in $(seq ${1:-6}); do
  true
  sleep 1
  out=/work/crawl/t$a; rm -rf $out
  flock /tmp/ff-heavy.lock bench/scale.sh --counts 512 --drivers 8 --only local --idle 3 --probes 2 --secs 3 --bin $B --out $out --label crawl > /dev/null 2>&1
  echo "attempt $a: $(grep -h agg_mb $out/results.csv | cut -d, -f5) MB/s; server $(grep -h SLEEPS $out/*.server); client $(grep -h SLEEPS $out/*.client)"
  pkill -f 'cp -a /work/target-ucx64'; sleep 1
done
rm -rf /work/crawl/copy
