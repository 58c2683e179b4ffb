#!/bin/bash
# Which threads are busy while NCCL streams big all_reduces through two routers.
set -u
O=${OUT:-/tmp/out}; B=target/release
mkdir -p $B && cp .gpu/bin/* $B/
for mode in sealed clear; do
    extra=(); [ $mode = clear ] && extra=(--clear)
    top -H -b -d 0.3 -n 400 -w 200 > $O/top-$mode.raw &
    tp=$!
    timeout 150 bash bench/nccl_gpu.sh --mps --routers 2 "${extra[@]}" --min-bytes $((16 << 20)) --max-bytes $((256 << 20)) --out $O/$mode > $O/$mode.txt 2>&1
    echo "== $mode rc=$?"; kill $tp; cat $O/$mode/README.md
    # frames: keep threads above 15% CPU
    awk '/^top -/{t=$3} $9+0 > 15 {print t, $1, $9, $12}' $O/top-$mode.raw > $O/top-$mode.busy
    echo "-- busiest threads (frames where they were > 15%), by name:"
    awk '{k=$2" "$4; n[k]++; s[k]+=$3} END {for (k in n) printf "%-24s frames %4d mean %%CPU %5.1f\n", k, n[k], s[k]/n[k]}' $O/top-$mode.busy | sort -k4 -nr | head -20
    rm -f $O/top-$mode.raw
    rm -rf $O/$mode/*.log
done
