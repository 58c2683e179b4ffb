#!/bin/bash
# A/B: pump workers and link streams at N=512 across (issue 17)
cd /work/main
for r in 3 4 5; do
  for v in default s8 s16 pw8; do
    case $v in
      default) f="";;
      pw8) f="--pump-workers 8";;
      s8) f="--peer-streams 8";;
      s16) f="--peer-streams 16";;
    esac
    flock -o /tmp/ff-heavy.lock bench/scale.sh --only across --counts "1 512" --drivers 8 --idle 3 --probes 5 \
      ${f:+--router-flags "$f"} --out /tmp/s31/ab/$v-r$r > /tmp/s31/ab-$v-r$r.log 2>&1
    echo "$v r$r: $(grep -E 'agg_mb|jain' /tmp/s31/ab/$v-r$r/results.csv | tr '\n' ' ')"
  done
done
