#!/bin/bash
# Old build (before the ring windows) against new, alternating, one host:
# bench/scale.sh --only local with drivers and with a thread per connection.
# ROUNDS (default 3); binaries in /tmp/old-bin and /tmp/new-bin. Run from the top.
set -euo pipefail
out=${OUT:-$(dirname "$0")}
rounds=${1:-3}
for r in $(seq "$rounds"); do
    for v in old new; do
        echo "== round $r: $v ($(date -u +%H:%M:%S))"
        flock -o /tmp/ff-heavy.lock bench/scale.sh --only local --counts "1 64 256 512" --drivers "0 8" --idle 2 --probes 3 --bin "/tmp/$v-bin" --out "$out/$v-r$r" > "$out/$v-r$r.log" 2>&1 || echo "rc=$?"
        grep -E ",(agg_mb_per_s|jain)," "$out/$v-r$r/results.csv" | awk -F, '{printf "%s %s %s=%s\n", $2, $4, $3, $5}' | paste -sd' ' | fold -w 200
    done
done
