#!/bin/bash
# bench/run.sh - FreeFlow vs UCX, all in one run, on this host.
#
#   bench/run.sh [--quick] [--out DIR] [--bin DIR] [--load]
#
# Runs, one after the other on an otherwise idle machine:
#   * ff: two containers (tools/ffcontainer: own net/IPC/PID/mount namespaces,
#     only the tenant's router socket shared) through ffrouter:
#     ffbench pingpong 8 B, stream 8 B / 64 KiB / 1 MiB / 4 MiB (32 in flight,
#     one buffer per side, like ucx_perftest);
#   * the router's CPU use over 10 s with two idle connected clients;
#   * UCX 1.13.1 ucx_perftest (bench/ucx_baselines.sh): posix,cma,self between
#     two host processes (what containers cannot use) and tcp,self between two
#     containers over veth (what containers use today).
# Every bandwidth row from 64 KiB up comes with a cpu_per_gb row: CPU
# seconds the whole machine spent per GB moved (every process and the
# kernel, from /proc/stat). --load runs one busy-looping process per core
# beside everything (as data loaders do to a training job); CPU per GB is
# then not reported.
# Then prints the table of ratios, checks the targets of issue #2, writes PNG
# plots and records everything (with versions) under --out
# (default bench/results/<date>).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0 bin="" load=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        --bin) bin=$2; shift ;;
        --load) load=1 ;;
        -h|--help) sed -n 2,18p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh needs root (network namespaces)" >&2; exit 1; }
[ -n "$out" ] || out="$top/bench/results/$(date +%Y-%m-%d)"
mkdir -p "$out"
[ -n "${bin:-}" ] || bin="$top/target/release"
for b in ffrouter ffbench; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b: run cargo build --release --workspace" >&2; exit 1; }
done
csv="$out/results.csv"
rm -f "$csv"
echo "suite,transport,test,size_bytes,value,unit" > "$csv"

work=$(mktemp -d /tmp/ffbench.XXXXXX)
router_pid=""
loaders=()
cleanup() {
    [ ${#loaders[@]} -gt 0 ] && kill "${loaders[@]}" 2>/dev/null || true
    [ -n "$router_pid" ] && kill "$router_pid" 2>/dev/null || true
    "$top/tools/ffcontainer" cleanup ffb >/dev/null 2>&1 || true
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
    local n=$(( $(cat "$work/seq") + 1 ))
    echo "$n" > "$work/seq"
    echo "$n"
}
ctr() { # ctr ID ARGS... : run ffbench ARGS in a fresh container
    local id=$1; shift
    "$top/tools/ffcontainer" run --name "ffb$$-$id" --ip "10.77.0.$((100 + id % 150))/24" \
        --socket-dir "$work/tenants/bench" -- "$bin/ffbench" "$@"
}

# pair ARGS...: server and client containers; prints the client's RESULT line
pair() {
    local a b
    a=$(next_id); b=$(next_id)
    local sout="$work/srv.$a.out"
    ctr "$a" serve "$@" > "$sout" &
    local spid=$!
    local h=""
    for _ in $(seq 400); do
        h=$(sed -n 's/^HANDLE //p' "$sout" 2>/dev/null | head -1)
        [ -n "$h" ] && break
        sleep 0.05
    done
    [ -n "$h" ] || { echo "server did not start" >&2; return 1; }
    ctr "$b" connect "$@" --handle "$h" | grep '^RESULT'
    wait "$spid"
}

val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }

if [ $quick = 1 ]; then lat_iters=50000; scale=1; else lat_iters=300000; scale=3; fi

if [ $load = 1 ]; then
    for _ in $(seq "$(nproc)"); do (while :; do :; done) & loaders+=($!); done
    echo "== loaded: ${#loaders[@]} busy loops" >&2
    export UCX_BASELINE_NO_CPU=1
fi

echo "== ff: ping-pong 8 B" >&2
r=$(pair pingpong --size 8 --iters $lat_iters)
echo "ff,ff,tag_lat,8,$(echo "$r" | val half_rtt_us_p50),us" >> "$csv"
echo "== ff: stream" >&2
for spec in "8 $((1000000 * scale))" "65536 $((30000 * scale))" "1048576 $((3000 * scale))" "4194304 $((600 * scale))"; do
    set -- $spec
    r=$(pair stream --size "$1" --iters "$2" --window 32)
    if [ "$1" = 8 ]; then
        echo "ff,ff,tag_bw,8,$(echo "$r" | val mmsg_per_s),Mmsg/s" >> "$csv"
    else
        echo "ff,ff,tag_bw,$1,$(echo "$r" | val mb_per_s),MB/s" >> "$csv"
        [ $load = 1 ] || echo "ff,ff,cpu_per_gb,$1,$(echo "$r" | val cpu_s_per_gb),s/GB" >> "$csv"
    fi
done

echo "== ff: router CPU with two idle connected clients (10 s)" >&2
ticks() { awk '{print $14 + $15}' "/proc/$router_pid/stat"; }
ia=$(next_id); ib=$(next_id)
ctr "$ia" serve idle --secs 14 > "$work/idle.out" &
ipid=$!
for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$work/idle.out" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
ctr "$ib" connect idle --secs 14 --handle "$h" > /dev/null &
cpid=$!
sleep 2
t0=$(ticks); s0=$(date +%s.%N)
sleep 10
t1=$(ticks); s1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
cpu=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$hz" 'BEGIN{printf "%.3f", 100 * (b - a) / hz / (e - s)}')
echo "ff,ff,router_idle_cpu,0,$cpu,%core" >> "$csv"
wait "$ipid" "$cpid" || true

echo "== UCX baselines" >&2
kill "$router_pid"; router_pid=""
[ -n "${FF_BENCH_SKIP_UCX:-}" ] || "$here/ucx_baselines.sh" "$csv"

{
    echo "# FreeFlow benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- ffrouter $("$bin/ffrouter" --version | cut -d' ' -f2) (commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)), $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- UCX $(ucx_info -v | sed -n 's/^# Version //p'), $(mpirun --version 2>/dev/null | head -1)"
    echo "- command: bench/run.sh$([ $quick = 1 ] && echo ' --quick')$([ $load = 1 ] && echo " --load ($(nproc) busy loops beside the benchmark)")"
    echo
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot"
    echo
    /usr/bin/python3 "$here/targets.py" "$csv"
} | tee "$out/README.md"
echo "results: $out" >&2
