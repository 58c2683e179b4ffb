#!/bin/bash
# ucx_bench.sh - the UCX transport ff (libuct_ff.so) against UCX's own
# transports, all in one run.
#
# Usage: bench/ucx_bench.sh [--quick] [--out DIR]
#
# Measures with ucx_perftest (UCP tag API, UCX 1.13.1):
#   ff,self         server and client each in its own container
#                   (tools/ffcontainer: own network, IPC, PID and mount
#                   namespaces) talking through ffrouter, with
#                   LD_PRELOAD=target/release/libuct_ff.so UCX_TLS=ff,self
#   posix,cma,self  two host processes (shared memory + CMA: what containers
#                   cannot use)          } bench/ucx_baselines.sh
#   tcp,self        two containers over veth (what containers use today) }
# Tests: tag_lat 8 B (p50, one-way, us), tag_bw 8 B (Mmsg/s), tag_bw 64 KiB,
# 1 MiB, 4 MiB (MB/s = 10^6 B/s), with the iteration counts of
# ucx_baselines.sh. Every transport runs UCX_BENCH_ROUNDS times (default 3,
# --quick: 1), rounds interleaved so that noise hits all alike; the table
# uses the median.
#
# Writes DIR/results.csv (suite,transport,test,size_bytes,value,unit;
# suite=ucx), DIR/README.md (versions, table, ratios, the issue's targets)
# and DIR/plot-bw.png, DIR/plot-lat.png. Default DIR:
# bench/results/ucx-<date>. Needs root and a release build
# (cargo build --release -p ucx-transport -p ffrouter).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,27p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $(id -u) = 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
rel=$top/target/release
lib=$rel/libuct_ff.so
for f in "$lib" "$rel/ffrouter"; do
    [[ -e $f ]] || { echo "missing $f: cargo build --release -p ucx-transport -p ffrouter" >&2; exit 1; }
done
[[ -n $out ]] || out=$top/bench/results/ucx-$(date +%Y-%m-%d)
mkdir -p "$out"
csv=$out/results.csv
rm -f "$csv"
echo "suite,transport,test,size_bytes,value,unit" >"$csv"
rounds=${UCX_BENCH_ROUNDS:-$([[ $quick = 1 ]] && echo 1 || echo 3)}

work=$(mktemp -d /tmp/ucx_bench.XXXXXX)
router_pid=""
srv_pid=""
cleanup() {
    [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null || true
    [[ -n $router_pid ]] && kill "$router_pid" 2>/dev/null || true
    "$top/tools/ffcontainer" cleanup "ucxf$$" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$work/tenants/bench"
"$rel/ffrouter" --tenant "bench=$work/tenants/bench/ffrouter.sock" --log-level warn &
router_pid=$!
for _ in $(seq 100); do [[ -S $work/tenants/bench/ffrouter.sock ]] && break; sleep 0.05; done

# Same tests and iteration counts as ucx_baselines.sh (shared memory rows).
tests=("lat tag_lat 8 1000000" "bw8 tag_bw 8 10000000" "bw64k tag_bw 65536 200000"
       "bw1m tag_bw 1048576 10000" "bw4m tag_bw 4194304 2500")
port=$((20000 + RANDOM % 20000))
srv_ip=10.77.0.241

busy_jiffies() {  # the machine's busy time so far, in clock ticks
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# ff_run TEST SIZE N: server and client containers; prints the Final
# line's p50, rate and bandwidth, then the CPU seconds per GB moved (the
# whole machine, from /proc/stat, over the client's run).
ff_run() {
    local test=$1 size=$2 n=$3 w=$(( $3 / 10 )) log=$work/srv.log
    port=$((port + 1))
    "$top/tools/ffcontainer" run --name "ucxf$$-s" --ip "$srv_ip/24" \
        --socket-dir "$work/tenants/bench" -- env UCX_TLS=ff,self \
        bash -c "LD_PRELOAD=$lib timeout 90 ucx_perftest -p $port" >"$log" 2>&1 </dev/null &
    srv_pid=$!
    for _ in $(seq 200); do
        ip netns exec "ffc-ucxf$$-s" ss -ltnH "sport = :$port" 2>/dev/null | grep -q . && break
        sleep 0.05
    done
    local j0 j1
    j0=$(busy_jiffies)
    "$top/tools/ffcontainer" run --name "ucxf$$-c" --ip 10.77.0.242/24 \
        --socket-dir "$work/tenants/bench" -- env UCX_TLS=ff,self UCX_LOG_LEVEL=info \
        bash -c "LD_PRELOAD=$lib timeout 90 ucx_perftest $srv_ip -p $port -t $test -s $size -n $n -w $w -f" \
        >"$work/cli.log" 2>&1 </dev/null || true
    j1=$(busy_jiffies)
    wait "$srv_pid" 2>/dev/null || true
    srv_pid=""
    grep -q 'tag(ff/router)' "$work/cli.log" || { echo "ff lane not selected:" >&2; tail -5 "$work/cli.log" >&2; return 1; }
    awk -v a="$j0" -v b="$j1" -v hz="$(getconf CLK_TCK)" -v bytes="$((size * (n + w)))" \
        'NF == 8 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9.]+$/ { last = $2 " " $8 " " $6 }
         END { if (last == "") exit 1; printf "%s %.4f\n", last, (b - a) / hz / (bytes / 1e9) }' "$work/cli.log"
}

for ((r = 1; r <= rounds; r++)); do
    echo "== round $r/$rounds: ff,self between two containers" >&2
    for t in "${tests[@]}"; do
        read -r key test size n <<<"$t"
        [[ $quick = 1 ]] && n=$((n / 10))
        if ! vals=$(ff_run "$test" "$size" "$n"); then
            echo "ff,self $test $size failed" >&2
            continue
        fi
        read -r p50 rate bw_mib cpu <<<"$vals"
        case $key in
            lat) v=$p50 u=us ;;
            bw8) v=$(awk -v r="$rate" 'BEGIN { printf "%.3f", r / 1e6 }') u=Mmsg/s ;;
            *) v=$(awk -v b="$bw_mib" 'BEGIN { printf "%.1f", b * 1048576 / 1e6 }') u=MB/s ;;
        esac
        echo "ucx,\"ff,self\",$test,$size,$v,$u" | tee -a "$csv"
        [[ $key = lat || $key = bw8 ]] || echo "ucx,\"ff,self\",cpu_per_gb,$size,$cpu,s/GB" | tee -a "$csv"
    done
    echo "== round $r/$rounds: UCX baselines" >&2
    "$here/ucx_baselines.sh" "$csv"
done

{
    echo "# UCX transport ff vs UCX shared memory and TCP, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- libuct_ff.so from $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown), $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- UCX $(ucx_info -v | sed -n 's/^# Version //p'), $(mpirun --version 2>/dev/null | head -1)"
    echo "- ff,self: two containers (own net/IPC/PID/mount namespaces) through ffrouter; posix,cma,self: two host processes; tcp,self: two containers over veth"
    echo "- $rounds round(s), interleaved; values are medians; command: bench/ucx_bench.sh$([[ $quick = 1 ]] && echo ' --quick')"
    echo
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot"
    echo
    /usr/bin/python3 "$here/ucx_targets.py" "$csv"
} | tee "$out/README.md"
echo "results: $out" >&2
