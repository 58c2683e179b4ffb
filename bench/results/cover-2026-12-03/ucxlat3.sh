#!/bin/bash
# ucxlat.sh NICE LIB N: UCX over ff tag_lat across two hosts beside 2 busy loops
set -uo pipefail
top=/work/main; here=$top/bench; bin=${BIN:-$top/target/release}
. "$here/twohosts.sh"
loaders=()
trap 'kill ${loaders[@]} 2>/dev/null; twohosts_down' EXIT
[ "$1" = - ] || twohosts_router_flags=(--nice $1)
twohosts_up "$bin" 0
[ "${NOLOAD:-}" ] || for _ in 1 2; do (while :; do :; done) & loaders+=($!); done
FFC=$top/tools/ffcontainer; port=$((20000 + RANDOM % 20000))
UCX_TLS=${TLS:-ff,self} $FFC run --name "${twohosts_prefix}s" --ip 10.71.0.251/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$2 timeout 100 ucx_perftest -p $port > ${SRVLOG:-/dev/null} 2>&1 &
twohosts_pods+=($!)
sleep 1
UCX_TLS=${TLS:-ff,self} $FFC run --name "${twohosts_prefix}c" --ip 10.72.0.252/24 --bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench" -- env LD_PRELOAD=$2 timeout 90 ucx_perftest 10.71.0.251 -p $port -t tag_lat -s 8 -n $3 -w 100 -f ${PERF_EXTRA:-} 2>&1 | tail -1
