#!/bin/bash
# run.sh TAG ROUNDS BUILDS... : alternate builds, counts 1 64 512, drivers 8
tag=$1 rounds=$2; shift 2
o=/tmp/scale4/$tag; mkdir -p $o
cd /work/wt-scale4
for i in $(seq $rounds); do for b in "$@"; do
  name=${b%%:*}; envs=${b#*:}; [ "$envs" = "$b" ] && envs=
  d=$o/$name-$i
  echo "start $name $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o/log.txt
  flock /tmp/ff-heavy.lock env $envs bench/scale.sh --counts "${COUNTS:-1 64 512}" --drivers 8 --only across --idle 3 --probes 10 --bin /tmp/scale4-bin-${name%%+*} --label $name-$i --out $d > $d.stdout 2> $d.stderr
  echo "end $name $i $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) rc=$?" >> $o/log.txt
  grep -h 'agg\|jain' $d/results.csv | grep -v connect >> /dev/null
done; done
