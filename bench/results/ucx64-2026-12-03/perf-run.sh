#!/bin/bash
# run1.sh BINDIR SIZE ITERS [VAR=VAL...]: one ff tag_bw run between the two emulated hosts, perf of 3 s in the middle
set -uo pipefail
top=/work/wt-ucx64
. $top/bench/twohosts.sh
trap twohosts_down EXIT
bin=$1 size=$2 n=$3; shift 3
twohosts_up "$bin" 0
port=$((20000 + RANDOM % 20000))
FFC=$top/tools/ffcontainer
env "$@" UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}s" --ip 10.71.0.251/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$bin/libuct_ff.so ucx_perftest -p $port > /tmp/ucx64/srv.log 2>&1 &
twohosts_pods+=($!)
sleep 1
( sleep 2; perf record -a -g -o /tmp/ucx64/perf.data -- sleep 3 >/dev/null 2>&1 ) &
sp=$!
env "$@" UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}c" --ip 10.72.0.252/24 --bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench" -- env LD_PRELOAD=$bin/libuct_ff.so ucx_perftest 10.71.0.251 -p $port -t tag_bw -s $size -n $n -w 1000 -f 2>&1 | tail -3
wait $sp
