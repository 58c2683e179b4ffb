#!/bin/bash
# across-host N=512, 8 drivers, repeated, with the new diagnostics
cd /work/main
for a in $(seq ${1:-8}); do
  out=/work/crawl/x$a; rm -rf $out
  flock /tmp/ff-heavy.lock bench/scale.sh --counts 512 --drivers 8 --only across --idle 3 --probes 20 --secs 3 --bin /work/crawl/bin --out $out --label crawlx > /dev/null 2>&1
  echo "attempt $a $(date +%T): $(awk -F, '$3 ~ /agg_mb|jain|naps_run_out|steal|iowait|busy_connect_ms_p99/ {printf "%s=%s ", $3, $5}' $out/results.csv)"
done
