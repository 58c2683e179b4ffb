#!/bin/bash
# NCCL through two routers (sealed), 4 KiB-1 MiB: ec4d6a1 vs rewinding, alternating.
set -u
O=${OUT:-/tmp/out}; B=target/release; mkdir -p $B
for r in 1 2; do for v in base new; do
    cp .gpu/$v/* $B/
    timeout 50 bash bench/nccl_gpu.sh --mps --routers 2 --min-bytes 4096 --max-bytes 1048576 --out $O/$v-$r > $O/$v-$r.txt 2>&1
    echo "== $v-$r rc=$? $(date -u +%T)"; sed -n '3,$p' $O/$v-$r/README.md 2>/dev/null || tail -3 $O/$v-$r.txt
    rm -rf $O/$v-$r
done; done
