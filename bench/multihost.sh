#!/bin/bash
# bench/multihost.sh - FreeFlow between hosts vs UCX tcp, in one run.
#
#   bench/multihost.sh [--quick] [--rounds N] [--out DIR] [--only ff|ucx] [--insecure] [--bin DIR] [--load] [--pin]
#
# Builds two emulated hosts: network namespaces ffmh0-$$ and ffmh1-$$
# joined by a veth (10.88.0.1/24 - 10.88.0.2/24), each with a container
# bridge (10.71.0.0/24, 10.72.0.0/24) routed over the veth, and a router on
# each (--listen-addr on the veth; links sealed with a peer secret, or in
# clear with --insecure, to measure what sealing costs). Then, one after
# the other:
#   * ff: ffbench between a container on host 0 (serve) and one on host 1
#     (connect), through both routers and the TCP link between them:
#     pingpong 8 B, stream 8 B / 64 KiB / 1 MiB / 4 MiB (32 in flight);
#   * the routers' CPU use over 10 s with one idle connection across;
#   * UCX tcp,self (bench/ucx_baselines.sh, ucx_perftest) directly between
#     two containers on the same two hosts: same bridges, same veth;
#   * UCX ff,self: the same ucx_perftest over FreeFlow's UCX transport
#     (libuct_ff.so) through both routers, as Open MPI jobs use it (for
#     information: the targets compare ffbench's ff with tcp,self).
# Bandwidth rows from 64 KiB up come with cpu_per_gb rows: CPU seconds the
# benchmark (both hosts: routers, clients, the kernel's work for them)
# spent per GB moved, from a cpuacct cgroup the script puts itself in (so
# other work on the machine is not counted; without cpuacct, the whole
# machine's). --load runs one busy-looping process per core beside
# everything, outside that cgroup. --pin gives each emulated host a CPU of
# its own (host 0's router and containers on CPU 0, host 1's on CPU 1,
# UCX's containers too), as real hosts have their own cores; by default
# the scheduler puts both hosts' threads on both CPUs.
# The ff and UCX measurements alternate for --rounds rounds (default 5, 1
# with --quick), so that both see the same background load; the table uses
# the median of the rounds. Rows "multihost,TRANSPORT,TEST,SIZE,VALUE,UNIT"
# go to DIR/results.csv, then the table, plots and the targets of issue #5
# (bandwidth >= 0.9x UCX tcp from 64 KiB up, 8-byte latency <= 1.5x) and of
# issue 12 (ffbench and UCX over ff: bandwidth >= 1.1x UCX tcp at 64 KiB,
# 1 MiB and 4 MiB, 8-byte latency <= 1.1x, CPU per GB at 4 MiB <= tcp's) to
# DIR/README.md.
# DIR defaults to bench/results/multihost-<date>. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0 out="" only="" rounds="" insecure=0 bin="" load=0 pin=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --insecure) insecure=1 ;;
        --load) load=1 ;;
        --pin) pin=1 ;;
        --out) out=$2; shift ;;
        --bin) bin=$2; shift ;;
        --only) only=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        -h|--help) sed -n 2,38p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/multihost.sh needs root (network namespaces)" >&2; exit 1; }
[ -n "$out" ] || out="$top/bench/results/multihost-$(date +%Y-%m-%d)"
mkdir -p "$out"
[ -n "${bin:-}" ] || bin="$top/target/release"
for b in ffrouter ffbench; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b: run cargo build --release --workspace" >&2; exit 1; }
done
csv="$out/results.csv"
rm -f "$csv"
echo "suite,transport,test,size_bytes,value,unit" > "$csv"

loaders=()
cg=""
. "$here/twohosts.sh"
cleanup() {
    [ ${#loaders[@]} -gt 0 ] && kill "${loaders[@]}" 2>/dev/null || true
    twohosts_down
    if [ -n "$cg" ]; then
        exec 6<&-
        echo $$ > /sys/fs/cgroup/cpuacct/cgroup.procs 2>/dev/null || true
        rmdir "$cg" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# CPU accounting: this script and everything it starts, nothing else
# (FF_BENCH_NO_CGROUP=1: the whole machine, as builds before ffbench knew
# FF_BENCH_CPU_FD count; bench/ab.sh sets it so that variants compare).
if [ -z "${FF_BENCH_NO_CGROUP:-}" ] && [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ] && mkdir "/sys/fs/cgroup/cpuacct/ffbench-$$" 2>/dev/null; then
    cg=/sys/fs/cgroup/cpuacct/ffbench-$$
    echo $$ > "$cg/cgroup.procs"
    export FF_BENCH_CPU_CGROUP="$cg"
    # ffbench reads it through a descriptor (containers have their own /sys).
    exec 6<"$cg/cpuacct.usage"
    export FF_BENCH_CPU_FD=6
fi

# --- the two hosts (bench/twohosts.sh): namespaces $ns0 and $ns1, a router
# on each, container bridges ffbr, tenant sockets in $work/h{0,1}/bench
if [ "$pin" = 1 ]; then
    twohosts_cpus=(0 1)
    export UCX_BASELINE_SERVER_CPUS=0 UCX_BASELINE_CLIENT_CPUS=1
fi
twohosts_up "$bin" "$insecure"

echo 0 > "$work/seq"
next_id() {
    local n=$(( $(cat "$work/seq") + 1 ))
    echo "$n" > "$work/seq"
    echo "$n"
}
ctr() { # ctr HOST ID ARGS... : ffbench ARGS in a fresh container on HOST
    local h=$1 id=$2; shift 2
    local ns cpu=(); ns=$([ "$h" = 0 ] && echo "$ns0" || echo "$ns1")
    [ "$pin" = 1 ] && cpu=(taskset -c "$h")
    ${cpu[@]+"${cpu[@]}"} "$top/tools/ffcontainer" run --name "ffm$$-$id" --ip "10.7$((h + 1)).0.$((100 + id % 150))/24" \
        --bridge ffbr --host-netns "$ns" --socket-dir "$work/h$h/bench" -- "$bin/ffbench" "$@"
}
# pair ARGS...: server on host 0, client on host 1; prints the client's RESULT
pair() {
    local a b
    a=$(next_id); b=$(next_id)
    local sout="$work/srv.$a.out"
    ctr 0 "$a" serve "$@" > "$sout" &
    local spid=$!
    local h=""
    for _ in $(seq 400); do
        h=$(sed -n 's/^HANDLE //p' "$sout" 2>/dev/null | head -1)
        [ -n "$h" ] && break
        sleep 0.05
    done
    [ -n "$h" ] || { echo "server did not start" >&2; return 1; }
    ctr 1 "$b" connect "$@" --handle "$h" | grep '^RESULT'
    wait "$spid"
}
val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
if [ $quick = 1 ]; then lat_iters=20000; scale=1; else lat_iters=100000; scale=2; fi
[ -n "$rounds" ] || rounds=$([ $quick = 1 ] && echo 1 || echo 5)

if [ $load = 1 ]; then
    for _ in $(seq "$(nproc)"); do (while :; do :; done) & loaders+=($!); done
    echo "== loaded: ${#loaders[@]} busy loops" >&2
    if [ -n "$cg" ]; then
        # Outside the benchmark's cgroup: their CPU is not the benchmark's.
        for p in "${loaders[@]}"; do echo "$p" > /sys/fs/cgroup/cpuacct/cgroup.procs; done
    else
        export UCX_BASELINE_NO_CPU=1
    fi
fi

for round in $(seq "$rounds"); do
echo "== round $round of $rounds" >&2
if [ "$only" != ucx ]; then
    echo "== ff between hosts: ping-pong 8 B" >&2
    r=$(pair pingpong --size 8 --iters $lat_iters)
    echo "multihost,ff,tag_lat,8,$(echo "$r" | val half_rtt_us_p50),us" >> "$csv"
    echo "== ff between hosts: stream" >&2
    for spec in "8 $((100000 * scale))" "65536 $((10000 * scale))" "1048576 $((700 * scale))" "4194304 $((200 * scale))"; do
        set -- $spec
        r=$(pair stream --size "$1" --iters "$2" --window 32)
        if [ "$1" = 8 ]; then
            echo "multihost,ff,tag_bw,8,$(echo "$r" | val mmsg_per_s),Mmsg/s" >> "$csv"
        else
            echo "multihost,ff,tag_bw,$1,$(echo "$r" | val mb_per_s),MB/s" >> "$csv"
            [ $load = 1 ] && [ -z "$cg" ] || echo "multihost,ff,cpu_per_gb,$1,$(echo "$r" | val cpu_s_per_gb),s/GB" >> "$csv"
        fi
    done

  if [ "$round" = 1 ]; then
    echo "== ff between hosts: routers' CPU with one idle connection (10 s)" >&2
    ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    rpid() { pgrep -P "$1" ffrouter 2>/dev/null || echo "$1"; }  # ip netns exec may exec or fork
    p0=$(rpid "$r0"); p1=$(rpid "$r1")
    ia=$(next_id); ib=$(next_id)
    ctr 0 "$ia" serve idle --secs 14 > "$work/idle.out" &
    ipid=$!
    for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$work/idle.out" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
    ctr 1 "$ib" connect idle --secs 14 --handle "$h" > /dev/null &
    cpid=$!
    sleep 2
    t0=$(( $(ticks "$p0") + $(ticks "$p1") )); s0=$(date +%s.%N)
    sleep 10
    t1=$(( $(ticks "$p0") + $(ticks "$p1") )); s1=$(date +%s.%N)
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$hz" 'BEGIN{printf "%.3f", 100 * (b - a) / hz / (e - s)}')
    echo "multihost,ff,routers_idle_cpu,0,$cpu,%core" >> "$csv"
    wait "$ipid" "$cpid" || true
  fi
fi

if [ "$only" != ff ] && [ -z "${FF_BENCH_SKIP_UCX:-}" ]; then
    # tcp,self: UCX's own TCP directly between the containers; ff,self:
    # UCX over FreeFlow (what Open MPI jobs use), through both routers.
    tls="tcp,self"
    [ -e "$bin/libuct_ff.so" ] && tls="tcp,self ff,self"
    echo "== UCX $tls between containers on the two hosts" >&2
    UCX_BASELINE_TLS="$tls" UCX_BASELINE_SUITE=multihost UCX_BASELINE_BRIDGE=ffbr \
        UCX_BASELINE_SERVER_NETNS="$ns0" UCX_BASELINE_CLIENT_NETNS="$ns1" \
        UCX_BASELINE_SERVER_IP=10.71.0.251/24 UCX_BASELINE_CLIENT_IP=10.72.0.252/24 \
        UCX_BASELINE_FF_LIB="$bin/libuct_ff.so" \
        UCX_BASELINE_SERVER_SOCKDIR="$work/h0/bench" UCX_BASELINE_CLIENT_SOCKDIR="$work/h1/bench" \
        "$here/ucx_baselines.sh" "$csv"
fi
done

{
    echo "# FreeFlow between two hosts, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- two emulated hosts (network namespaces) on this machine, joined by a veth; a router on each, TCP link between them"
    echo "- ffrouter $("$bin/ffrouter" --version | cut -d' ' -f2) (commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)), $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- UCX $(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p')"
    echo "- CPU per GB: $([ -n "$cg" ] && echo "the benchmark's own processes on both hosts and the kernel's work for them (cpuacct cgroup)" || echo "the whole machine (/proc/stat; no cpuacct cgroup here)")"
    echo "- command: bench/multihost.sh$([ $quick = 1 ] && echo ' --quick')$([ $insecure = 1 ] && echo ' --insecure')$([ $load = 1 ] && echo " --load ($(nproc) busy loops beside the benchmark)")$([ $pin = 1 ] && echo " --pin (host 0 on CPU 0, host 1 on CPU 1)")"
    echo
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot"
    echo
    /usr/bin/python3 - "$csv" <<'EOF'
import csv, statistics, sys
vals = {}
for r in csv.DictReader(open(sys.argv[1])):
    vals.setdefault((r["transport"], r["test"], int(r["size_bytes"])), []).append(float(r["value"]))
rows = {k: statistics.median(v) for k, v in vals.items()}
n = max(len(v) for v in vals.values())
print(f"Medians of {n} round(s); ff and UCX alternate within each round.")
print()
print("| target (issue #5) | measured | verdict |")
print("|---|---|---|")
for size in (65536, 1 << 20, 4 << 20):
    a, b = rows.get(("ff", "tag_bw", size)), rows.get(("tcp,self", "tag_bw", size))
    if a is None or b is None:
        print(f"| ff {size // 1024} KiB stream >= 0.9x UCX tcp | missing | n/a |")
        continue
    print(f"| ff {size // 1024} KiB stream >= 0.9x UCX tcp | {a / b:.2f}x ({a:,.0f} vs {b:,.0f} MB/s) | {'PASS' if a / b >= 0.9 else 'FAIL'} |")
a, b = rows.get(("ff", "tag_lat", 8)), rows.get(("tcp,self", "tag_lat", 8))
if a is None or b is None:
    print("| ff 8 B latency <= 1.5x UCX tcp | missing | n/a |")
else:
    print(f"| ff 8 B latency <= 1.5x UCX tcp | {a / b:.2f}x ({a:.2f} vs {b:.2f} us) | {'PASS' if a / b <= 1.5 else 'FAIL'} |")
c = rows.get(("ff", "routers_idle_cpu", 0))
if c is not None:
    print(f"| both routers, one idle connection across (info) | {c:.2f} % of a core | |")
print()
print("| target (issue 12), against UCX tcp | ffbench (ff) | UCX over ff (ff,self) |")
print("|---|---|---|")
def verdict(t, test, size, ok):
    a, b = rows.get((t, test, size)), rows.get(("tcp,self", test, size))
    if a is None or b is None:
        return "missing"
    return f"{a / b:.2f}x {'PASS' if ok(a / b) else 'FAIL'}"
for size in (65536, 1 << 20, 4 << 20):
    print(f"| {size // 1024} KiB bandwidth >= 1.1x | " + " | ".join(verdict(t, "tag_bw", size, lambda r: r >= 1.1) for t in ("ff", "ff,self")) + " |")
print("| 8 B latency <= 1.1x | " + " | ".join(verdict(t, "tag_lat", 8, lambda r: r <= 1.1) for t in ("ff", "ff,self")) + " |")
print("| CPU per GB at 4 MiB <= 1x | " + " | ".join(verdict(t, "cpu_per_gb", 4 << 20, lambda r: r <= 1.0) for t in ("ff", "ff,self")) + " |")
EOF
} | tee "$out/README.md"
echo "results: $out" >&2
