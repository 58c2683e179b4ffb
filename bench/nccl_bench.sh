#!/bin/bash
# bench/nccl_bench.sh - the NCCL net plugin's traffic: FreeFlow vs TCP vs UCX.
#
#   bench/nccl_bench.sh [--iters N] [--reps R] [--no-ucx] [--out FILE.csv]
#
# NCCL's pattern on one connection: 1 MiB messages, 8 in flight (NCCL_STEPS),
# measured at the receiver, median of R runs (default 3), all in one run:
#   * ff          nccl-harness recv/send in two containers (tools/ffcontainer)
#                 through ffrouter: target/release/libnccl_net_ff.so loaded
#                 with dlopen(RTLD_NOW|RTLD_LOCAL) and driven like NCCL's proxy;
#   * tcp-netns   nccl-harness tcp-recv/tcp-send: the same messages over one
#                 TCP connection between two containers over the veth bridge
#                 (what NCCL's Socket net does between network namespaces);
#   * ucx         ucx_perftest tag_bw 1 MiB over posix,cma,self between two
#                 host processes (bench/ucx_baselines.sh; skip with --no-ucx).
# Buffers: test tag_bw gives each of the 8 requests its own 1 MiB buffer per
# side, as NCCL's staging slots do; tag_bw_1buf reuses one buffer per side,
# as ucx_perftest does (it stays in cache, so it is much faster). ff and
# tcp-netns are compared on tag_bw, ff and UCX on tag_bw_1buf.
# Appends rows "suite,transport,test,size_bytes,value,unit" to --out
# (default bench/results/<date>/nccl.csv; suite nccl for ours, ucx for UCX),
# prints the ratios and checks the targets: ff >= 2x tcp-netns and
# ff >= 0.8x UCX posix,cma,self. Exit status 1 if a target is missed.
# Needs root (containers) and `cargo build --release -p nccl-net-plugin -p ffrouter`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
iters=2000
reps=3
ucx=1
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --iters) iters=$2; shift ;;
        --reps) reps=$2; shift ;;
        --no-ucx) ucx=0 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,26p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "$0 needs root (network namespaces)" >&2; exit 1; }
bin="$top/target/release"
for f in ffrouter nccl-harness libnccl_net_ff.so; do
    [ -e "$bin/$f" ] || { echo "missing $bin/$f: cargo build --release -p nccl-net-plugin -p ffrouter" >&2; exit 1; }
done
[ -n "$out" ] || out="$top/bench/results/$(date +%Y-%m-%d)/nccl.csv"
mkdir -p "$(dirname "$out")"
[ -s "$out" ] || echo "suite,transport,test,size_bytes,value,unit" > "$out"

size=1048576
window=8
bridge=ffnccl0 # own bridge and subnet: no clash with tests running alongside
subnet=10.79.0
work=$(mktemp -d /tmp/nccl_bench.XXXXXX)
router_pid=""
cleanup() {
    [ -n "$router_pid" ] && kill "$router_pid" 2>/dev/null || true
    "$top/tools/ffcontainer" cleanup "ncb$$" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/tenants/bench"
sock="$work/tenants/bench/ffrouter.sock"
"$bin/ffrouter" --tenant "bench=$sock" --log-level warn &
router_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

echo 0 > "$work/seq"
next_id() { # a fresh container number (works inside $(...) subshells)
    local i=$(( $(cat "$work/seq") + 1 ))
    echo "$i" > "$work/seq"
    echo "$i"
}
ip_of() { echo "$subnet.$((10 + $1 % 200))"; }
ctr() { # ctr ID ARGS... : run ARGS in a fresh container; its stdout to $work/out.ID
    local id=$1; shift
    "$top/tools/ffcontainer" run --name "ncb$$-$id" --ip "$(ip_of "$id")/24" --bridge "$bridge" \
        --socket-dir "$work/tenants/bench" -- "$@" > "$work/out.$id"
}
wait_line() { # wait_line FILE PREFIX : prints the rest of the first line starting with PREFIX
    local l=""
    for _ in $(seq 400); do
        l=$(sed -n "s/^$2 //p" "$1" 2>/dev/null | head -1)
        [ -n "$l" ] && { echo "$l"; return 0; }
        sleep 0.05
    done
    echo "no '$2' line in $1" >&2
    return 1
}
mbps() { sed -n 's/^RESULT .* mb_per_s=\([0-9.]*\).*/\1/p' "$1"; }
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

ff_once() { # ff_once BUFFERS
    local a b
    a=$(next_id); b=$(next_id)
    ctr "$a" "$bin/nccl-harness" recv --lib "$bin/libnccl_net_ff.so" --mode bench \
        --size $size --iters "$iters" --window $window --buffers "$1" &
    local rp=$!
    local h
    h=$(wait_line "$work/out.$a" HANDLE)
    ctr "$b" "$bin/nccl-harness" send --lib "$bin/libnccl_net_ff.so" --mode bench \
        --size $size --iters "$iters" --window $window --buffers "$1" --handle "$h"
    wait "$rp"
    mbps "$work/out.$a"
}

tcp_once() {
    local a b
    a=$(next_id); b=$(next_id)
    ctr "$a" "$bin/nccl-harness" tcp-recv --port 5555 --size $size --iters "$iters" --window $window &
    local rp=$!
    wait_line "$work/out.$a" LISTENING > /dev/null
    ctr "$b" "$bin/nccl-harness" tcp-send --connect "$(ip_of "$a"):5555" --size $size --iters "$iters" --window $window
    wait "$rp"
    mbps "$work/out.$a"
}

reps_of() { # reps_of CMD ARGS... : median MB/s of $reps runs
    local v
    for _ in $(seq "$reps"); do v=$("$@"); echo "  $v MB/s" >&2; echo "$v"; done | median
}
echo "== ff (plugin through ffrouter, two containers): $reps x $iters x 1 MiB, $window in flight" >&2
ff=$(reps_of ff_once $window)
echo "nccl,ff,tag_bw,$size,$ff,MB/s" >> "$out"
echo "== ff, one buffer per side (like ucx_perftest)" >&2
ff1=$(reps_of ff_once 1)
echo "nccl,ff,tag_bw_1buf,$size,$ff1,MB/s" >> "$out"
echo "== tcp-netns (two containers over veth): $reps x $iters x 1 MiB" >&2
tcp=$(reps_of tcp_once)
echo "nccl,tcp-netns,tag_bw,$size,$tcp,MB/s" >> "$out"
kill "$router_pid"; router_pid=""

ucxv=""
if [ $ucx = 1 ]; then
    echo "== UCX posix,cma,self tag_bw 1 MiB (host processes)" >&2
    ucsv="$work/ucx.csv"
    UCX_BASELINE_TLS="posix,cma,self" UCX_BASELINE_TESTS="bw1m" "$here/ucx_baselines.sh" "$ucsv" >&2
    grep '^ucx,' "$ucsv" >> "$out"
    ucxv=$(awk -F, '/^ucx,"posix,cma,self",tag_bw,1048576,/ {print $(NF - 1)}' "$ucsv")
fi

echo "# NCCL net plugin traffic, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "# 1 MiB messages, $window in flight, median of $reps runs of $iters; MB/s = 10^6 B/s"
printf '%-34s %10s MB/s\n' "ff (plugin), 8 buffers" "$ff" "tcp-netns, 8 buffers" "$tcp" "ff (plugin), 1 buffer per side" "$ff1"
[ -n "$ucxv" ] && printf '%-34s %10s MB/s\n' "ucx posix,cma,self, 1 buffer" "$ucxv"
fail=0
check() { # check NAME RATIO TARGET
    local verdict=ok
    awk -v r="$2" -v t="$3" 'BEGIN {exit !(r >= t)}' || { verdict=MISSED; fail=1; }
    printf '%-30s %6.2fx  (target >= %sx) %s\n' "$1" "$2" "$3" "$verdict"
}
check "ff / tcp-netns" "$(awk -v a="$ff" -v b="$tcp" 'BEGIN {print a / b}')" 2
[ -n "$ucxv" ] && check "ff / ucx posix,cma (1 buffer)" "$(awk -v a="$ff1" -v b="$ucxv" 'BEGIN {print a / b}')" 0.8
echo "rows appended to $out" >&2
exit $fail
