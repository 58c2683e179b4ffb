#!/bin/bash
# probe.sh BINDIR CMD...: runs CMD (with $LIB = BINDIR/libuct_ff.so) in a container on emulated host 0
set -euo pipefail
top=/work/wt-ucx64
. $top/bench/twohosts.sh
trap twohosts_down EXIT
bin=$1; shift
twohosts_up "$bin" 0
$top/tools/ffcontainer run --name "${twohosts_prefix}p" --ip 10.71.0.9/24 --bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench" -- env LD_PRELOAD=$bin/libuct_ff.so "$@"
