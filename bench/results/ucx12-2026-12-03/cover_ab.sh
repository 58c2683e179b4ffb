#!/bin/bash
# alternate router env variants with the new build, each invocation has tcp as anchor
cd /work/wt-ucx12
for i in 1 2 3; do
  for v in new off nocover; do
    case $v in new) env=(X=1);; off) env=(FF_ROUTER_COVER_BULK=0);; nocover) env=(FF_ROUTER_REPLY_US=0);; esac
    env "${env[@]}" bench/allreduce_hosts.sh --rounds 2 --no-tf --bin /work/ucx12-new-bin --out /tmp/u12/cov-$v-$i --transports "ff tcp,self" 2>&1 | grep -E "round [0-9]|Per-round" | sed "s/^/$v $i: /"
  done
done
uptime
