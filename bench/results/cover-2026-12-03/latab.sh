#!/bin/bash
# latab.sh ROUNDS: UCX over ff 8 B tag_lat across two emulated hosts, variants alternating; prints csv
for i in $(seq $1); do
  for v in new:50 new:200 cov:50 cov:200 tcp:0; do
    b=${v%%:*} r=${v#*:}
    if [ $b = tcp ]; then
      out=$(NOLOAD=1 TLS=tcp,self BIN=/work/bin-new bash ucxlat3.sh - /work/bin-new/libuct_ff.so 20000 2>/dev/null | tail -1)
    else
      out=$(FF_ROUTER_REPLY_US=$r NOLOAD=1 BIN=/work/bin-$b bash ucxlat3.sh - /work/bin-$b/libuct_ff.so 20000 2>/dev/null | tail -1)
    fi
    echo "$i,$b,$r,$(echo $out | awk '{print $2","$3}')"
  done
done
