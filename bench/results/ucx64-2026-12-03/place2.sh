#!/bin/bash
# place2.sh BINDIR RUNS: ff tag_bw 64 KiB runs between the two emulated hosts (routers kept between runs);
# per run the bandwidth and each router thread's CPU ticks during the run (h0 = server/receiver host, h1 = client/sender host)
set -uo pipefail
top=/work/wt-ucx64
. $top/bench/twohosts.sh
trap twohosts_down EXIT
bin=$1 runs=$2
twohosts_up "$bin" 0
FFC=$top/tools/ffcontainer
snap() { for h in 0 1; do p=$([ $h = 0 ] && echo $r0 || echo $r1); for t in /proc/$p/task/*; do awk -v h=$h '{ n=$2; gsub(/[()]/,"",n); print "h" h ":" n ":" $1, $14+$15 }' $t/stat; done; done | sort; }
for r in $(seq $runs); do
port=$((20000 + RANDOM % 20000))
UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}s$r" --ip 10.71.0.251/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 60 ucx_perftest -p $port > /dev/null 2>&1 &
sp=$!
sleep 1
snap > /tmp/ucx64/s0
bw=$(UCX_TLS=ff,self $FFC run --name "${twohosts_prefix}c$r" --ip 10.72.0.252/24 --bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench" -- env LD_PRELOAD=$bin/libuct_ff.so timeout 60 ucx_perftest 10.71.0.251 -p $port -t tag_bw -s 65536 -n 60000 -w 2000 -f 2>&1 | awk 'NF == 8 && $1 ~ /^[0-9]+$/ {x=$6} END {print x}')
snap > /tmp/ucx64/s1
wait $sp 2>/dev/null
echo "run $r: $bw MiB/s; router threads' CPU ticks during the run:"
join /tmp/ucx64/s0 /tmp/ucx64/s1 | awk '$3 - $2 > 5 { sub(/:[0-9]+$/, "", $1); printf "  %s %d", $1, $3 - $2 } END { print "" }'
done
