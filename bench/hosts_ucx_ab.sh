#!/bin/bash
# bench/hosts_ucx_ab.sh - UCX over ff between two emulated hosts: several
# builds (or settings) and UCX tcp, alternating within each round.
#
#   bench/hosts_ucx_ab.sh [--rounds N] [--insecure] [--pin | --cpus "R0 R1 S C"] [--tests "bw64k bw1m bw4m"] [--out DIR] NAME=BINDIR[,VAR=VALUE...] ...
#
# BINDIR holds a build's ffrouter and libuct_ff.so; VAR=VALUE settings
# (e.g. UCX_FF_BULK_NAP=0) go into that variant's environment only, and the
# setting "clear" runs that variant's routers with links in clear
# (--insecure-no-peer-secret), so that one run compares sealed links,
# links in clear and UCX tcp (which is in clear), e.g.
#   bench/hosts_ucx_ab.sh ff=target/release ff-clear=target/release,clear
# The two emulated hosts
# are bench/twohosts.sh's (a router on each, TCP link, sealed with a peer
# secret unless --insecure). Each round restarts both routers with each
# variant's ffrouter in turn and runs bench/ucx_baselines.sh's ff,self
# ucx_perftest (server container on host 0, client on host 1) with that
# variant's libuct_ff.so, then UCX tcp,self between the same containers.
# Rows go to DIR/results.csv (suite = the variant's NAME; tcp rows suite
# "tcp"); DIR/README.md gets medians per variant and test, and the ratio
# to tcp. CPU per GB is the benchmark cgroup's (bench/ucx_baselines.sh).
# By default the scheduler places the routers and containers of both
# hosts; --cpus places them by hand: host 0's router, host 1's router, the
# server container (host 0) and the client container (host 1) on those
# CPUs, "-" leaving one to the scheduler; --pin (--cpus "0 1 0 1") gives
# each emulated host a CPU of its own, as real hosts have.
# Needs root. Default DIR: bench/results/hosts-ucx-<date>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=3 insecure=0 cpus="" tests="bw64k bw1m bw4m" out=""
variants=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --insecure) insecure=1 ;;
        --pin) cpus="0 1 0 1" ;;
        --cpus) cpus=$2; shift ;;
        --tests) tests=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,27p "$0"; exit 0 ;;
        *=*) variants+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#variants[@]} -ge 1 ] || { echo "give at least one NAME=BINDIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
[ -n "$out" ] || out="$top/bench/results/hosts-ucx-$(date +%Y-%m-%d)"
. "$here/twohosts.sh"
pins=()
if [ -n "$cpus" ]; then
    twohosts_place "$cpus"
    [ "${twohosts_pod_cpus[0]}" = - ] || pins+=(UCX_BASELINE_SERVER_CPUS="${twohosts_pod_cpus[0]}")
    [ "${twohosts_pod_cpus[1]}" = - ] || pins+=(UCX_BASELINE_CLIENT_CPUS="${twohosts_pod_cpus[1]}")
fi
mkdir -p "$out"
csv="$out/results.csv"
echo "suite,transport,test,size_bytes,value,unit" > "$csv"

load0=$(cut -d' ' -f1-3 /proc/loadavg)
cg=""
cleanup() {
    twohosts_down
    if [ -n "$cg" ]; then
        echo $$ > /sys/fs/cgroup/cpuacct/cgroup.procs 2>/dev/null || true
        rmdir "$cg" 2>/dev/null || true
    fi
}
trap cleanup EXIT
if [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ] && mkdir "/sys/fs/cgroup/cpuacct/ffhab-$$" 2>/dev/null; then
    cg=/sys/fs/cgroup/cpuacct/ffhab-$$
    echo $$ > "$cg/cgroup.procs"
    export FF_BENCH_CPU_CGROUP="$cg"
fi

first=${variants[0]#*=}
first=${first%%,*}
twohosts_up "$first" "$insecure"
ucx() { # ucx SUITE TLS LIB [VAR=VALUE...]
    local extra=("${@:4}")
    env ${pins[@]+"${pins[@]}"} "${extra[@]}" UCX_BASELINE_TLS="$2" UCX_BASELINE_SUITE="$1" UCX_BASELINE_TESTS="$tests" UCX_BASELINE_BRIDGE=ffbr \
        UCX_BASELINE_SERVER_NETNS="$ns0" UCX_BASELINE_CLIENT_NETNS="$ns1" \
        UCX_BASELINE_SERVER_IP=10.71.0.251/24 UCX_BASELINE_CLIENT_IP=10.72.0.252/24 \
        UCX_BASELINE_FF_LIB="$3" \
        UCX_BASELINE_SERVER_SOCKDIR="$work/h0/bench" UCX_BASELINE_CLIENT_SOCKDIR="$work/h1/bench" \
        "$here/ucx_baselines.sh" "$csv" >/dev/null || echo "== $1 $2: some runs failed" >&2
}
for round in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        name=${v%%=*} dir=${v#*=}
        IFS=, read -r -a settings <<<"$dir"
        dir=${settings[0]}
        clear=$insecure vars=()
        for x in "${settings[@]:1}"; do
            if [ "$x" = clear ]; then clear=1; else vars+=("$x"); fi
        done
        echo "== round $round: $name ($dir${vars[*]+ ${vars[*]}}$([ $clear = 1 ] && echo ', links in clear'))" >&2
        twohosts_bin=$dir
        twohosts_routers "$clear"
        ucx "$name" ff,self "$dir/libuct_ff.so" ${vars[@]+"${vars[@]}"}
    done
    echo "== round $round: UCX tcp" >&2
    ucx tcp tcp,self "$dir/libuct_ff.so"
done

{
    echo "# UCX over ff between two emulated hosts, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); load average at the start: $load0, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown); UCX $(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p'); $([ -n "$cpus" ] && echo "pinned (--cpus \"$cpus\": host 0's router, host 1's router, the server container on host 0, the client container on host 1)" || echo "both emulated hosts share the machine's cores")"
    echo "- links $([ $insecure = 1 ] && echo 'in clear (--insecure-no-peer-secret)' || echo 'sealed (peer secret), except for variants with the setting "clear" (--insecure-no-peer-secret)')"
    echo "- command: bench/hosts_ucx_ab.sh --rounds $rounds$([ $insecure = 1 ] && echo ' --insecure')$([ -n "$cpus" ] && echo " --cpus \"$cpus\"") --tests \"$tests\" ${variants[*]}"
    echo
    /usr/bin/python3 - "$csv" <<'EOF'
import csv, statistics, sys
vals = {}
for r in csv.DictReader(open(sys.argv[1])):
    vals.setdefault((r["suite"], r["test"], int(r["size_bytes"])), []).append(float(r["value"]))
suites = list(dict.fromkeys(k[0] for k in vals))
keys = sorted({(k[1], k[2]) for k in vals})
med = {k: statistics.median(v) for k, v in vals.items()}
print("Medians of the rounds (every round: each variant, then tcp).")
print()
print("| test | size | " + " | ".join(suites) + " | " + " | ".join(f"{s} / tcp" for s in suites if s != "tcp") + " |")
print("|---|---:|" + "---:|" * (2 * len(suites) - 1))
for t, size in keys:
    row = [med.get((s, t, size)) for s in suites]
    cells = ["-" if x is None else f"{x:,.2f}" for x in row]
    b = med.get(("tcp", t, size))
    ratios = []
    for s in suites:
        if s == "tcp":
            continue
        x = med.get((s, t, size))
        ratios.append("-" if x is None or not b else f"{x / b:.2f}x")
    print(f"| {t} | {size} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
print()
print("Every round:")
print()
for (s, t, size), v in sorted(vals.items()):
    print(f"- {s} {t} {size}: " + ", ".join(f"{x:g}" for x in v))
EOF
} > "$out/README.md"
cat "$out/README.md"
