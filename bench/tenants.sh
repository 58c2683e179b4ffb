#!/bin/bash
# bench/tenants.sh - shares of the link between two hosts among tenants
# (issue 17: "fair sharing among connections and among tenants").
#
#   bench/tenants.sh [--conns N] [--size BYTES] [--secs S] [--rounds R]
#                    [--depth D] [--router-flags "FLAGS"] [--out DIR]
#                    [NAME=BINDIR ...]
#
# Two emulated hosts (bench/twohosts.sh: network namespaces, a router each,
# sealed TCP link) whose routers serve two tenants, "bench" and "other".
# At the same time tenant bench streams --size messages (default 1 MiB) on
# N connections (default 16) from host 1 to host 0, and tenant other on
# one, each with `ffbench scale` (its buffers registered, one driver thread per
# side: each tenant's clients have one thread per host, so the routers and
# not the clients' share of the cores decide the split), each connection
# with --depth messages outstanding (default 1: a tenant whose next message
# waits for the last; more, as NCCL keeps several steps in flight, keep
# every connection backlogged at the router; ffbench's `--depth`, so
# every build's ffbench must have it then). Each server
# reports its tenant's MB/s over --secs (default 5); the row gives tenant
# other's share of the two: 0.5 is fair among tenants, 1/(N+1) what turns
# per connection give. Each NAME=BINDIR (a build's ffrouter and ffbench;
# default: this checkout's release build as "this") runs once per round,
# alternating. Rows "tenants,NAME,METRIC,ROUND,VALUE,UNIT" go to
# DIR/results.csv and a summary to DIR/README.md (default DIR:
# bench/results/tenants-<date>). --router-flags adds FLAGS to both
# routers' command lines (e.g. "--pump-workers 1"). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
conns=16 size=1048576 secs=5 rounds=3 depth=1 out="" router_flags=""
builds=()
while [ $# -gt 0 ]; do
    case "$1" in
        --conns) conns=$2; shift ;;
        --size) size=$2; shift ;;
        --secs) secs=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --depth) depth=$2; shift ;;
        --out) out=$2; shift ;;
        --router-flags) router_flags=$2; shift ;;
        -h|--help) sed -n 2,27p "$0"; exit 0 ;;
        *=*) builds+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/tenants.sh needs root (network namespaces)" >&2; exit 1; }
[ ${#builds[@]} -gt 0 ] || builds=("this=${CARGO_TARGET_DIR:-$top/target}/release")
[ -n "$out" ] || out="$top/bench/results/tenants-$(date +%Y-%m-%d)"
mkdir -p "$out"
csv="$out/results.csv"
echo "suite,build,metric,round,value,unit" > "$csv"

. "$here/twohosts.sh"
twohosts_tenants=(other)
read -r -a twohosts_router_flags <<< "$router_flags"
trap twohosts_down EXIT
val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }
seq_id=0
deep=()
[ "$depth" = 1 ] || deep=(--depth "$depth")
ctr() { # ctr ID HOST TENANT ARGS... : ffbench ARGS in a fresh container of TENANT on HOST
    local id=$1 h=$2 t=$3; shift 3
    twohosts_pod "$h" "$id" "$t" timeout -k 5 120 "$twohosts_bin/ffbench" "$@"
}
wait_handle() { # wait_handle FILE: its HANDLE line, within 20 s
    local i
    for i in $(seq 400); do
        grep -q '^HANDLE ' "$1" 2>/dev/null && { sed -n 's/^HANDLE //p' "$1" | head -1; return 0; }
        sleep 0.05
    done
    return 1
}

up=""
for r in $(seq "$rounds"); do
    for b in "${builds[@]}"; do
        name=${b%%=*} dir=${b#*=}
        for x in ffrouter ffbench; do [ -x "$dir/$x" ] || { echo "missing $dir/$x" >&2; exit 1; }; done
        if [ -z "$up" ]; then twohosts_up "$dir" 0; up=1; else twohosts_bin=$dir; twohosts_routers 0; fi
        sleep 0.5
        pids=()
        for t in bench other; do
            n=$([ $t = bench ] && echo "$conns" || echo 1)
            seq_id=$((seq_id + 1))
            ctr "$seq_id" 0 "$t" serve scale --conns "$n" --drivers 1 "${deep[@]}" --size "$size" --secs "$secs" > "$out/$name-$r-$t.server" 2>&1 &
            pids+=($!)
        done
        hb=$(wait_handle "$out/$name-$r-bench.server") && ho=$(wait_handle "$out/$name-$r-other.server") ||
            { echo "tenants: a server did not start" >&2; exit 1; }
        seq_id=$((seq_id + 1))
        ctr "$seq_id" 1 bench connect scale --conns "$conns" --drivers 1 "${deep[@]}" --size "$size" --idle-secs 1 --probes 0 --handle "$hb" > "$out/$name-$r-bench.client" 2>&1 &
        pids+=($!)
        seq_id=$((seq_id + 1))
        ctr "$seq_id" 1 other connect scale --conns 1 --drivers 1 "${deep[@]}" --size "$size" --idle-secs 1 --probes 0 --handle "$ho" > "$out/$name-$r-other.client" 2>&1 &
        pids+=($!)
        # The machine's busy CPU (both hosts, every process, the kernel)
        # over about the servers' measured window: it starts a second after
        # both clients stream.
        st0="" st1=""
        for _ in $(seq 200); do
            grep -q '^STREAMING' "$out/$name-$r-bench.client" 2>/dev/null && grep -q '^STREAMING' "$out/$name-$r-other.client" 2>/dev/null && break
            sleep 0.05
        done
        sleep 1.1
        st0=$(head -1 /proc/stat)
        sleep "$secs"
        st1=$(head -1 /proc/stat)
        for p in "${pids[@]}"; do wait "$p" || true; done
        a=$(grep -h '^RESULT' "$out/$name-$r-bench.server" | val agg_mb_per_s)
        o=$(grep -h '^RESULT' "$out/$name-$r-other.server" | val agg_mb_per_s)
        bad=$(cat "$out/$name-$r-"*.server | grep -h '^RESULT' | val bad_messages | awk '{ s += $1 } END { print s + 0 }')
        [ -n "$a" ] && [ -n "$o" ] || { echo "tenants: $name round $r: no result (see $out/$name-$r-*)" >&2; continue; }
        share=$(awk -v a="$a" -v o="$o" 'BEGIN { printf "%.3f", o / (a + o) }')
        # CPU seconds per GB moved: busy jiffies (user..steal) over the
        # window, over what both tenants moved in --secs.
        cpu=$(echo "$st0 $st1" | awk -v hz="$(getconf CLK_TCK)" -v mb="$(awk -v a="$a" -v o="$o" -v s="$secs" 'BEGIN { print (a + o) * s }')" \
            '{ b0 = $2 + $3 + $4 + $7 + $8 + $9; b1 = $13 + $14 + $15 + $18 + $19 + $20; printf "%.3f", (b1 - b0) / hz / (mb / 1000) }')
        echo "tenants,$name,cpu_per_gb,$r,$cpu,s/GB" >> "$csv"
        echo "tenants,$name,bench_mb_per_s,$r,$a,MB/s" >> "$csv"
        echo "tenants,$name,other_mb_per_s,$r,$o,MB/s" >> "$csv"
        echo "tenants,$name,other_share,$r,$share,ratio" >> "$csv"
        echo "tenants,$name,bad_messages,$r,$bad,count" >> "$csv"
        echo "round $r $name: tenant bench ($conns connections) $a MB/s, tenant other (1) $o MB/s, other's share $share, machine CPU $cpu s/GB, bad messages $bad" >&2
        "$top/tools/ffcontainer" cleanup "$twohosts_prefix" >/dev/null 2>&1 || true
    done
done

{
    echo "# Tenants sharing the link between two hosts, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- ffrouter commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown) (the checkout; builds: ${builds[*]})"
    echo "- command: bench/tenants.sh --conns $conns --size $size --secs $secs --rounds $rounds --depth $depth${router_flags:+ --router-flags \"$router_flags\"} ${builds[*]}"
    echo "- tenant bench streams on $conns connections, tenant other on 1, at once, host 1 to host 0; fair share of tenant other: 0.5, per-connection turns: $(awk -v n="$conns" 'BEGIN { printf "%.3f", 1 / (n + 1) }')"
    echo "- CPU per GB: the machine's busy CPU (both hosts, every process, the kernel; /proc/stat) over the --secs ($secs s) starting a second after both clients stream, per GB both tenants moved"
    echo
    echo "| build | round | tenant bench MB/s | tenant other MB/s | other's share | machine CPU s/GB | bad messages |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { v[$2 "," $4 "," $3] = $5; if (!seen[$2 "," $4]++) k[++n] = $2 "," $4 }
        END { for (i = 1; i <= n; i++) { split(k[i], p, ","); printf "| %s | %s | %s | %s | %s | %s | %s |\n", p[1], p[2], v[k[i] ",bench_mb_per_s"], v[k[i] ",other_mb_per_s"], v[k[i] ",other_share"], v[k[i] ",cpu_per_gb"], v[k[i] ",bad_messages"] } }' "$csv"
    echo
    echo "![tenant other's share](tenants.png)"
} > "$out/README.md"
# The plot: tenant other's share per round and build, against the fair
# share and what turns per connection give.
/usr/bin/python3 - "$csv" "$out/tenants.png" "$conns" <<'PY' || echo "tenants: no plot (matplotlib missing)" >&2
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["metric"] == "other_share"]
builds = list(dict.fromkeys(r["build"] for r in rows))
fig, ax = plt.subplots(figsize=(6, 4))
k = 1
for i, b in enumerate(builds):
    v = [float(r["value"]) for r in rows if r["build"] == b]
    k = max(k, len(v))
    ax.bar([i + j * 0.8 / len(v) for j in range(len(v))], v, 0.8 / len(v), label=b)
n = int(sys.argv[3])
ax.axhline(0.5, color="green", linestyle="--", label="fair among tenants (0.5)")
ax.axhline(1 / (n + 1), color="red", linestyle=":", label=f"turns per connection (1/{n + 1})")
ax.set_xticks([i + 0.4 - 0.4 / k for i in range(len(builds))])
ax.set_xticklabels(builds)
ax.set_ylabel("tenant other's share of the two, by round")
ax.set_ylim(0, 0.6)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
PY
cat "$out/README.md"
