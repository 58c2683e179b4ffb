#!/bin/bash
# attempts.sh N MODE: N runs of N=512 local with 8 drivers, one after the
# other, each beside MODE: cp (a fresh cp -a of a 3.4 GB build tree),
# dropcp (the same after dropping the page cache), none (for the runs
# beside a `nice -n 10 cargo build --release --workspace` started by hand).
# One-off, as run (paths under /work).
cd /work/main
B=/work/crawl/bin
for a in $(seq ${1:-6}); do
  case ${2:-cp} in
    cp) rm -rf /work/crawl/copy; (cp -a /work/target-ucx64 /work/crawl/copy &) ;;
    dropcp) rm -rf /work/crawl/copy; sync; echo 3 > /proc/sys/vm/drop_caches; (cp -a /work/target-ucx64 /work/crawl/copy &) ;;
  esac
  sleep 1
  out=/work/crawl/t$a; rm -rf $out
  flock /tmp/ff-heavy.lock bench/scale.sh --counts 512 --drivers 8 --only local --idle 3 --probes 2 --secs 3 --bin $B --out $out --label crawl > /dev/null 2>&1
  echo "attempt $a: $(grep -h agg_mb $out/results.csv | cut -d, -f5) MB/s; server $(grep -h SLEEPS $out/*.server); client $(grep -h SLEEPS $out/*.client)"
  pkill -f 'cp -a /work/target-ucx64'; sleep 1
done
rm -rf /work/crawl/copy
