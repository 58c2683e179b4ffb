#!/bin/bash
# bench/rdmacm_bench.sh - rdma_cm over ff0 (ffrdmacm as librdmacm.so.1,
# ffverbs as libibverbs.so.1) between two host processes through one
# router: what connecting with rdma_cm costs, and that the data path is
# the one perftest gets without it. In one run, ROUNDS rounds (default 3),
# alternating in each round:
#   ib_write_lat 8 B and ib_write_bw 1 MiB, perftest's own TCP exchange
#     (`plain`) and the same with -R (`rdma_cm`): t_typical (us), average
#     bandwidth (MB/s = 10^6 B/s);
#   cmtime -c N (N = 100 and 1000 connections at once; rdmacm-utils):
#     microseconds per connection to connect (REQ to ESTABLISHED, queue
#     pairs included) and to disconnect.
# Writes DIR/results.csv (suite,transport,test,size_bytes,value,unit),
# DIR/README.md (medians and -R/plain ratios) and DIR/rdmacm.png; default
# DIR: bench/results/rdmacm-<date>. Needs the release build (cargo build
# --release -p ffverbs -p ffrdmacm -p ffrouter), perftest and rdmacm-utils
# (scripts/deps.sh). Run it under flock /tmp/ff-heavy.lock.
#
# Usage: bench/rdmacm_bench.sh [--out DIR] [--bin DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
out="" bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out=$2; shift ;;
        --bin) bin=$2; shift ;;
        *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
    esac
    shift
done
rounds=${ROUNDS:-3}
out=${out:-$top/bench/results/rdmacm-$(date +%F)}
mkdir -p "$out"
. "$here/verbs_common.sh"
verbs_setup rdmacm_bench cmtime
[[ -e $tgt/libffrdmacm.so ]] || { echo "$tgt/libffrdmacm.so missing: cargo build --release -p ffrdmacm" >&2; exit 1; }
ln -s "$tgt/libffrdmacm.so" "$vb/lib/librdmacm.so.1"
verbs_one_host
export LD_LIBRARY_PATH=$vb/lib FF_ROUTER_SOCKET=$vb/rt/t/ffrouter.sock
csv=$out/results.csv
echo "suite,transport,test,size_bytes,value,unit" >"$csv"

port=$((20000 + $$ % 5000))
# pair SERVER... -- CLIENT...: runs both (the server first, until it
# listens), prints the client's output; fails if either fails. With
# ENDLESS=1 the server (cmtime's) serves until killed: it is, after the
# client.
pair() {
    local srv=() cli
    while [[ $1 != -- ]]; do srv+=("$1"); shift; done
    shift
    port=$((port + 1))
    "${srv[@]}" -p "$port" >"$vb/s.log" 2>&1 &
    local spid=$! hex
    hex=$(printf ':%04X ' "$port")
    for _ in $(seq 200); do grep -q "$hex.* 0A " /proc/net/tcp && break; sleep 0.05; done
    cli=$("$@" -p "$port" 2>&1) || { echo "$cli" >&2; cat "$vb/s.log" >&2; kill "$spid" 2>/dev/null; wait "$spid" || true; return 1; }
    if [[ ${ENDLESS:-0} == 1 ]]; then
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
    else
        wait "$spid" || { cat "$vb/s.log" >&2; return 1; }
    fi
    echo "$cli"
}
# perftest TEST SIZE ITERS MODE: one pair; with MODE rdma_cm, -R (its
# second connect can race its own server: tried again, at most 3 times,
# as ffrdmacm/tests/rdmacm.rs does).
perftest() {
    local t=$1 s=$2 n=$3 r=() try
    [[ $4 == rdma_cm ]] && r=(-R)
    for try in 1 2 3; do
        if pair timeout 60 "$t" "${r[@]}" -s "$s" -n "$n" -- timeout 60 "$t" "${r[@]}" -s "$s" -n "$n" 127.0.0.1 >"$vb/c.out"; then
            grep -A1 '#bytes' "$vb/c.out" | tail -1
            return 0
        fi
        echo "($t ${r[*]}: try $try failed)" >&2
    done
    return 1
}

for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    for mode in plain rdma_cm; do
        line=$(perftest ib_write_lat 8 10000 "$mode")
        echo "rdmacm,$mode,ib_write_lat,8,$(awk '{print $5}' <<<"$line"),us" >>"$csv"
        line=$(perftest ib_write_bw 1048576 2000 "$mode")
        echo "rdmacm,$mode,ib_write_bw,1048576,$(awk '{printf "%.1f", $4 * 1.048576}' <<<"$line"),MB/s" >>"$csv"
    done
    for c in 100 1000; do
        res=$(ENDLESS=1 pair timeout 120 cmtime -b 127.0.0.1 -c "$c" -- timeout 120 cmtime -s 127.0.0.1 -c "$c")
        for step in connect disconnect; do
            echo "rdmacm,cmtime,$step,$c,$(awk -v s="$step" '$1 == s { print $NF }' <<<"$res"),us/conn" >>"$csv"
        done
    done
done

/usr/bin/python3 - "$csv" "$out" <<'EOF'
import csv, statistics, sys, platform, subprocess
rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
med = {}
for r in rows:
    med.setdefault((r["transport"], r["test"], r["size_bytes"], r["unit"]), []).append(float(r["value"]))
info = {}
for l in open("/proc/cpuinfo"):
    k, _, v = l.partition(":")
    info.setdefault(k.strip(), v.strip())
cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}), {sum(1 for l in open('/proc/cpuinfo') if l.startswith('processor'))} vCPUs"
lines = [f"# rdma_cm over ff0 (bench/rdmacm_bench.sh)", "",
         f"- CPU: {cpu}; kernel {platform.release()} ({subprocess.run(['uname', '-v'], capture_output=True, text=True).stdout.strip()})",
         f"- {len(rows) // 8} rounds, medians (min-max); one host, two host processes, one router",
         "- plain: perftest exchanges GID and QPN over its own TCP socket; rdma_cm: -R, ffrdmacm connects the queue pairs (the data path is the same ff0's)", "",
         "| test | plain (perftest's TCP exchange) | rdma_cm (-R) | rdma_cm / plain |", "|---|---|---|---|"]
for test, size, unit in (("ib_write_lat", "8", "us"), ("ib_write_bw", "1048576", "MB/s")):
    p, c = med[("plain", test, size, unit)], med[("rdma_cm", test, size, unit)]
    lines.append(f"| {test} {size} B ({unit}) | {statistics.median(p):g} ({min(p):g}-{max(p):g}) | "
                 f"{statistics.median(c):g} ({min(c):g}-{max(c):g}) | {statistics.median(c) / statistics.median(p):.2f} |")
lines += ["", "| cmtime | connect (us per connection) | disconnect (us per connection) |", "|---|---|---|"]
for n in ("100", "1000"):
    c, d = med[("cmtime", "connect", n, "us/conn")], med[("cmtime", "disconnect", n, "us/conn")]
    lines.append(f"| {n} connections | {statistics.median(c):g} ({min(c):g}-{max(c):g}) | {statistics.median(d):g} ({min(d):g}-{max(d):g}) |")
lines += ["", "![rdma_cm](rdmacm.png)", ""]
open(f"{out}/README.md", "w").write("\n".join(lines))
print("\n".join(lines))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(1, 3, figsize=(11, 3.2))
for a, (test, size, unit) in zip(ax[:2], (("ib_write_lat", "8", "us"), ("ib_write_bw", "1048576", "MB/s"))):
    vals = [statistics.median(med[(m, test, size, unit)]) for m in ("plain", "rdma_cm")]
    a.bar(["plain", "rdma_cm (-R)"], vals, color=["#888", "#2a7"])
    a.set_title(f"{test} {size} B"); a.set_ylabel(unit)
vals = [statistics.median(med[("cmtime", s, n, "us/conn")]) for n in ("100", "1000") for s in ("connect", "disconnect")]
ax[2].bar(["conn 100", "disc 100", "conn 1000", "disc 1000"], vals, color="#27a")
ax[2].set_title("cmtime"); ax[2].set_ylabel("us per connection")
fig.tight_layout(); fig.savefig(f"{out}/rdmacm.png", dpi=90)
EOF
