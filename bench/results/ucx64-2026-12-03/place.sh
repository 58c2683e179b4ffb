#!/bin/bash
# place.sh BINDIR RUNS: ff tag_bw 64 KiB runs between the two emulated hosts; per run the bandwidth and where the threads ran (ps psr samples)
set -uo pipefail
top=/work/wt-ucx64
. $top/bench/twohosts.sh
trap twohosts_down EXIT
bin=$1 runs=$2
twohosts_up "$bin" 0
FFC=$top/tools/ffcontainer
for r in $(seq $runs); do
port=$((20000 + RANDOM % 20000))
UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}s$r" --ip 10.71.0.251/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 60 ucx_perftest -p $port > /dev/null 2>&1 &
sp=$!
sleep 1
( sleep 1; for i in $(seq 10); do ps -eLo tid,psr,pcpu,comm | grep -E 'ucx_perftest|pump|peer-rx' | awk '$3 > 3 {print $4"@"$2}' | sort | tr '\n' ' '; echo; sleep 0.2; done ) > /tmp/ucx64/place-$r.txt 2>&1 &
pp=$!
bw=$(UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}c$r" --ip 10.72.0.252/24 --bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 60 ucx_perftest 10.71.0.251 -p $port -t tag_bw -s 65536 -n 60000 -w 2000 -f 2>&1 | awk 'NF == 8 && $1 ~ /^[0-9]+$/ {x=$6} END {print x}')
wait $pp; wait $sp 2>/dev/null
echo "run $r: $bw MiB/s"; sort /tmp/ucx64/place-$r.txt | uniq -c | sort -rn | head -4
done
