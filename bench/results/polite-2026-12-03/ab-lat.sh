#!/bin/bash
# ab-lat.sh ROUNDS OLD_BIN NEW_BIN: UCX tag_lat 8 B across two hosts, old vs new ff and tcp, unloaded and beside 2 busy loops
R=$1; O=$2; N=$3; out=${OUT:-/work/runs/ab-lat.csv}; echo "round,variant,load,typical_us,avg_us" > $out
for r in $(seq $R); do
  for load in 0 1; do
    nl=$([ $load = 0 ] && echo 1 || echo "")
    for v in old new tcp; do
      case $v in old) B=$O; L=$O/libuct_ff.so; T=ff,self;; new) B=$N; L=$N/libuct_ff.so; T=ff,self;; tcp) B=$N; L=""; T=tcp,self;; esac
      line=$(NOLOAD=$nl TLS=$T BIN=$B bash /work/runs/ucxlat3.sh 0 "$L" ${ITERS:-5000} 2>&1 | grep -E '^ +[0-9]+ ' | tail -1)
      echo "$r,$v,$load,$(echo $line | awk '{print $2","$4}')" | tee -a $out
    done
  done
done
