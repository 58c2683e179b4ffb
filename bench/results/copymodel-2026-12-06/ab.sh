#!/bin/bash
# The copy model (no transport) and ff's one-host scale run, alternating,
# under /tmp/ff-heavy.lock; ROUNDS rounds (default 3). Run from the top.
set -euo pipefail
out=$(dirname "$0")
rounds=${1:-3}
for r in $(seq "$rounds"); do
    for m in "--pairs 1" "--pairs 2" "--same-thread --pairs 2" "--copies 1 --pairs 2" "--copies 1 --same-thread --pairs 2"; do
        echo "== round $r: ffcopymodel $m ($(date -u +%H:%M:%S))"
        flock -o /tmp/ff-heavy.lock target/release/ffcopymodel --counts "1 16 64 512" --secs 3 $m --csv "$out/model.csv"
    done
    echo "== round $r: bench/scale.sh local drivers 8 ($(date -u +%H:%M:%S))"
    flock -o /tmp/ff-heavy.lock bench/scale.sh --only local --counts "1 16 64 512" --drivers 8 --idle 2 --probes 3 --out "$out/ff-local-r$r" > "$out/ff-local-r$r.log" 2>&1
    grep -E "agg_mb_per_s|jain" "$out/ff-local-r$r/results.csv"
done
