#!/bin/bash
# bwsched.sh BINDIR OUT: perf sched of UCX over ff 64 KiB tag_bw across two hosts
set -uo pipefail
top=/work/main; here=$top/bench; bin=$1
. "$here/twohosts.sh"
trap 'twohosts_down' EXIT
twohosts_up "$bin" 0
FFC=$top/tools/ffcontainer; port=$((20000 + RANDOM % 20000))
UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}s" --ip 10.71.0.251/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 100 ucx_perftest -p $port > /dev/null 2>&1 &
twohosts_pods+=($!)
sleep 1
UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}c" --ip 10.72.0.252/24 --bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 90 ucx_perftest 10.71.0.251 -p $port -t tag_bw -s 65536 -n 200000 -w 100 -f > $2.txt 2>&1 &
sleep 3
perf sched record -a -o $2.data sleep 0.5 >/dev/null 2>&1
pkill -f ucx_perftest
sleep 2
