#!/bin/bash
# ucx_ops_bench.sh - UCP active messages, RMA and atomics over the ff
# transport against UCX's own transports, in one run.
#
# Usage: bench/ucx_ops_bench.sh [--quick] [--out DIR]
#        bench/ucx_ops_bench.sh --report DIR   (README and plots again from
#                                               DIR/results.csv)
#
# ucx_perftest (UCX 1.13.1), two processes on this host:
#   ff,self         server and client each in its own container
#                   (tools/ffcontainer), through one ffrouter,
#                   LD_PRELOAD=target/release/libuct_ff.so; the run fails
#                   unless UCP put the test's lane on ff
#   posix,cma,self  two host processes (shared memory + CMA: what
#                   containers cannot use)
#   tcp,self        two containers over veth
# Tests (size: what is reported, from the client's Final line, overall):
#   ucp_am_bw  8 B: Mmsg/s; 64 KiB: MB/s
#   ucp_put_bw 8 B: Mmsg/s; 4 KiB, 1 MiB: MB/s
#   ucp_get    8 B: p50 latency (us); 1 MiB: MB/s
#   ucp_add    8 B: Mmsg/s (posted 64-bit atomic adds)
#   ucp_fadd   8 B: p50 latency (us) of a 64-bit fetch-and-add
# MB/s = 10^6 B/s. UCX_OPS_ROUNDS rounds (default 3, --quick 1), transports
# interleaved within a round; the table has medians.
#
# Writes DIR/results.csv (suite,transport,test,size_bytes,value,unit),
# DIR/meta.md (host, versions, settings), DIR/README.md (meta.md, table,
# ratios, then DIR/notes.md if someone wrote one) and DIR/plot-ops.png (each
# test relative to posix,cma,self), DIR/plot-bw.png, DIR/plot-lat.png
# (bench/plot.py). Default DIR: bench/results/ucx-ops-<date>. Needs root
# and a release build (cargo build --release -p ucx-transport -p ffrouter;
# CARGO_TARGET_DIR is honoured).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0
out=""
report_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        --report) out=$2; report_only=1; shift ;;
        -h|--help) sed -n 2,32p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $report_only = 0 ]]; then
[[ $(id -u) = 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
rel=${CARGO_TARGET_DIR:-$top/target}/release
lib=$rel/libuct_ff.so
ffc=$top/tools/ffcontainer
for f in "$lib" "$rel/ffrouter"; do
    [[ -e $f ]] || { echo "missing $f: cargo build --release -p ucx-transport -p ffrouter" >&2; exit 1; }
done
[[ -n $out ]] || out=$top/bench/results/ucx-ops-$(date +%Y-%m-%d)
mkdir -p "$out"
csv=$out/results.csv
echo "suite,transport,test,size_bytes,value,unit" >"$csv"
rounds=${UCX_OPS_ROUNDS:-$([[ $quick = 1 ]] && echo 1 || echo 3)}

work=$(mktemp -d /tmp/ucx_ops.XXXXXX)
router_pid=""
srv_pid=""
cleanup() {
    [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null || true
    [[ -n $router_pid ]] && kill "$router_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$work/tenants/bench"
"$rel/ffrouter" --tenant "bench=$work/tenants/bench/ffrouter.sock" --log-level warn &
router_pid=$!
for _ in $(seq 100); do [[ -S $work/tenants/bench/ffrouter.sock ]] && break; sleep 0.05; done

# key test size iterations: shared memory, ff, tcp (about 1 s each here;
# UCP emulates RMA and atomics over tcp's active messages), reported value
tests=(
    "am8 ucp_am_bw 8 4000000 1000000 50000 rate"
    "am64k ucp_am_bw 65536 200000 50000 20000 bw"
    "put8 ucp_put_bw 8 4000000 1000000 50000 rate"
    "put4k ucp_put_bw 4096 1000000 200000 20000 bw"
    "put1m ucp_put_bw 1048576 10000 2000 200 bw"
    "get8 ucp_get 8 1000000 200000 2000 lat"
    "get1m ucp_get 1048576 10000 2000 300 bw"
    "add8 ucp_add 8 4000000 1000000 50000 rate"
    "fadd8 ucp_fadd 8 1000000 200000 20000 lat"
)
# The lane each test must run on with ff: the ep_cfg line UCP logs at
# info level, or (atomics: UCP logs no ep_cfg line for them) the lane line
# at debug level (a hundred lines, all at connection setup).
lane_of() {
    case $1 in
        ucp_am_bw) echo "am(ff/router)" ;;
        ucp_put_bw|ucp_get) echo "rma(ff/router)" ;;
        *) echo "amo#0" ;;
    esac
}
loglevel_of() {
    case $1 in ucp_add|ucp_fadd) echo debug ;; *) echo info ;; esac
}
port=$((20000 + RANDOM % 20000))
srv_ip=10.77.0.231
cli_ip=10.77.0.232

listening() {  # NETNS("" = here) PORT
    if [[ -n $1 ]]; then ip netns exec "$1" ss -ltnH "sport = :$2" 2>/dev/null | grep -q .
    else ss -ltnH "sport = :$2" 2>/dev/null | grep -q .; fi
}

# one TLS TEST SIZE N: prints the client's Final line values "p50 rate bw_mib"
one() {
    local tls=$1 test=$2 size=$3 n=$4 w=$(( $4 / 10 )) ns="" i
    port=$((port + 1))
    case $tls in
        ff,self)
            ns=ffc-ucxo$$-s
            "$ffc" run --name "ucxo$$-s" --ip "$srv_ip/24" --socket-dir "$work/tenants/bench" -- \
                env UCX_TLS=ff,self LD_PRELOAD="$lib" timeout 60 ucx_perftest -p $port \
                >"$work/srv.log" 2>&1 </dev/null & ;;
        tcp,self)
            ns=ffc-ucxo$$-s
            "$ffc" run --name "ucxo$$-s" --ip "$srv_ip/24" -- \
                env UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 timeout 60 ucx_perftest -p $port \
                >"$work/srv.log" 2>&1 </dev/null & ;;
        *)
            UCX_TLS=$tls timeout 60 ucx_perftest -p $port >"$work/srv.log" 2>&1 </dev/null & ;;
    esac
    srv_pid=$!
    for ((i = 0; i < 200; i++)); do listening "$ns" $port && break; sleep 0.05; done
    local args=(-t "$test" -s "$size" -n "$n" -w "$w" -f)
    case $tls in
        ff,self)
            "$ffc" run --name "ucxo$$-c" --ip "$cli_ip/24" --socket-dir "$work/tenants/bench" -- \
                env UCX_TLS=ff,self UCX_LOG_LEVEL="$(loglevel_of "$test")" LD_PRELOAD="$lib" timeout 60 \
                ucx_perftest $srv_ip -p $port "${args[@]}" >"$work/cli.log" 2>&1 </dev/null || true ;;
        tcp,self)
            "$ffc" run --name "ucxo$$-c" --ip "$cli_ip/24" -- \
                env UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 timeout 60 \
                ucx_perftest $srv_ip -p $port "${args[@]}" >"$work/cli.log" 2>&1 </dev/null || true ;;
        *)
            UCX_TLS=$tls timeout 60 ucx_perftest 127.0.0.1 -p $port "${args[@]}" >"$work/cli.log" 2>&1 </dev/null || true ;;
    esac
    wait "$srv_pid" 2>/dev/null || true
    srv_pid=""
    if [[ $tls = ff,self ]] && ! grep -F "$(lane_of "$test")" "$work/cli.log" | grep -qF "ff/router"; then
        echo "ff: $test did not run on $(lane_of "$test"):" >&2
        grep ep_cfg "$work/cli.log" >&2 || tail -5 "$work/cli.log" >&2
        return 1
    fi
    awk 'NF == 8 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9.]+$/ { last = $2 " " $8 " " $6 }
         END { if (last == "") exit 1; print last }' "$work/cli.log"
}

for ((r = 1; r <= rounds; r++)); do
    for t in "${tests[@]}"; do
        read -r key test size n_shm n_ff n_tcp what <<<"$t"
        for tls in "ff,self" "posix,cma,self" "tcp,self"; do
            case $tls in posix*) n=$n_shm ;; ff*) n=$n_ff ;; *) n=$n_tcp ;; esac
            [[ $quick = 1 ]] && n=$((n / 10))
            echo "== round $r/$rounds: $tls $test $size" >&2
            if ! vals=$(one "$tls" "$test" "$size" "$n"); then
                echo "$tls $test $size failed" >&2
                tail -3 "$work/cli.log" >&2 || true
                continue
            fi
            read -r p50 rate bw_mib <<<"$vals"
            case $what in
                lat) v=$p50 u=us ;;
                rate) v=$(awk -v x="$rate" 'BEGIN { printf "%.3f", x / 1e6 }') u=Mmsg/s ;;
                bw) v=$(awk -v b="$bw_mib" 'BEGIN { printf "%.1f", b * 1048576 / 1e6 }') u=MB/s ;;
            esac
            echo "ucx,\"$tls\",$test,$size,$v,$u" | tee -a "$csv"
        done
    done
done

{
    echo "# UCP active messages, RMA and atomics: ff vs UCX shared memory and TCP, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) vCPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- libuct_ff.so from $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$top" diff --quiet HEAD -- ucx-transport ffcore 2>/dev/null || echo ' (with uncommitted changes)'), $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- UCX $(ucx_info -v | sed -n 's/^# Version //p'); ucx_perftest client Final line, overall values"
    echo "- ff,self: two containers (own net/IPC/PID/mount namespaces) through ffrouter; posix,cma,self: two host processes; tcp,self: two containers over veth"
    echo "- $rounds round(s), transports interleaved; values are medians; command: bench/ucx_ops_bench.sh$([[ $quick = 1 ]] && echo ' --quick')"
} >"$out/meta.md"
fi
csv=$out/results.csv
{
    cat "$out/meta.md"
    echo
    /usr/bin/python3 - "$csv" "$out/plot-ops.png" <<'EOF'
import csv, statistics, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
tls = ["ff,self", "posix,cma,self", "tcp,self"]
keys = []
vals = {}
for r in rows:
    k = (r["test"], int(r["size_bytes"]), r["unit"])
    if k not in keys:
        keys.append(k)
    vals.setdefault((k, r["transport"]), []).append(float(r["value"]))
med = {k: statistics.median(v) for k, v in vals.items()}
def size(n):
    return "%d MiB" % (n >> 20) if n >= 1 << 20 else "%d KiB" % (n >> 10) if n >= 1024 else "%d B" % n
print("| test | size | unit | " + " | ".join(tls) + " | ff / posix,cma | ff / tcp |")
print("|---|---:|---|" + "---:|" * (len(tls) + 2))
ratios = []
for k in keys:
    m = [med.get((k, t)) for t in tls]
    cell = lambda v: "-" if v is None else ("%.3g" % v if v < 100 else "%.0f" % v)
    def ratio(a, b):
        if a is None or b is None or b == 0:
            return None
        return a / b
    better_low = k[2] == "us"
    rp, rt = ratio(m[0], m[1]), ratio(m[0], m[2])
    ratios.append((k, rp, rt, better_low))
    f = lambda x: "-" if x is None else ("%.2fx" % x if x >= 0.01 else "%.1ex" % x)
    print("| %s | %s | %s | %s | %s | %s |" % (k[0], size(k[1]), k[2], " | ".join(cell(v) for v in m), f(rp), f(rt)))
print()
print("Ratios are value / value: for us (latency) below 1 is better, for MB/s and Mmsg/s above 1 is better.")
fig, ax = plt.subplots(figsize=(9, 4.5))
w = 0.27
for i, t in enumerate(tls):
    ys = []
    for k in keys:
        a, b = med.get((k, t)), med.get((k, "posix,cma,self"))
        if a is None or b is None:
            ys.append(0)
        else:
            ys.append(b / a if k[2] == "us" else a / b)
    ax.bar([x + (i - 1) * w for x in range(len(keys))], ys, w, label=t)
ax.set_xticks(range(len(keys)))
ax.set_xticklabels(["%s\n%s" % (k[0].replace("ucp_", ""), size(k[1])) for k in keys])
ax.axhline(1, color="grey", lw=0.8)
ax.set_ylabel("speed relative to posix,cma,self (higher is better)")
ax.set_yscale("log")
ax.set_title("UCP ops between two processes on one host (medians)")
ax.legend(loc="lower left")
ax.grid(True, axis="y", alpha=0.3)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
EOF
    echo
    echo "![relative to posix,cma,self](plot-ops.png)"
    if [[ -e $out/notes.md ]]; then echo; cat "$out/notes.md"; fi
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot" >/dev/null
} | tee "$out/README.md"
echo "results: $out" >&2
