#!/bin/bash
# repro2.sh ITERS OUTDIR LABEL=BIN...: scale.sh --counts 64 --only across per build, alternating, each with 4 busy loops (inside the lock)
iters=$1 out=$2; shift 2
mkdir -p "$out"; cd /work/wt-scale3
one() { # one LABEL BIN I
  local loaders=() p
  for _ in 1 2 3 4; do (while :; do :; done) & loaders+=($!); done
  echo "== $1 iter $3 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/log"
  timeout 400 bench/scale.sh --counts 64 --only across --idle 3 --probes 10 --bin "$2" --label "$1-$3" --out "$out/$1-$3" > "$out/$1-$3.stdout" 2> "$out/$1-$3.stderr"
  for p in "${loaders[@]}"; do kill $p; done
  echo "   end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/log"
  grep -h "down\|rror" "$out/$1-$3.stderr" | head -3 >> "$out/log"
  grep -h "agg_mb\|jain\|busy_connect_ms_p99" "$out/$1-$3/results.csv" >> "$out/log"
}
export -f one; export out
for i in $(seq "$iters"); do
  for lb in "$@"; do
    flock /tmp/ff-heavy.lock bash -c "one ${lb%%=*} ${lb#*=} $i"
  done
done
echo DONE >> "$out/log"
