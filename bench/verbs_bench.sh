#!/bin/bash
# verbs_bench.sh - Debian's perftest over ff0 (libffverbs.so as
# libibverbs.so.1, LD_LIBRARY_PATH) between two containers through one
# router, against the same sizes through UCX posix,cma,self (two host
# processes: shared memory containers cannot use) and tcp,self (two
# containers over veth), in one run.
#
# Usage: bench/verbs_bench.sh [--quick] [--hosts] [--bin DIR] [--out DIR]
#
# --hosts: the same between two emulated hosts (bench/twohosts.sh: a
# network namespace and a router each, links sealed), the perftest server
# in a container on host 0, the client in one on host 1, less the READ
# tests (ib_read_lat, ib_read_bw); UCX tcp,self
# between containers on the same two hosts (no posix,cma: it cannot cross
# hosts). --bin DIR: libffverbs.so and ffrouter from DIR (default: the
# release build).
#
# perftest (unmodified, Debian 12's 4.5), two containers (tools/ffcontainer):
#   ib_write_lat, ib_send_lat, ib_read_lat 8 B   t_typical (us; the write
#                                     and send tests report half a round
#                                     trip, the read test a whole READ)
#   ib_send_lat -e 8 B                the same, waiting for completion
#                                     events (ibv_get_cq_event)
#   ib_send_bw 8 B                    message rate (Mmsg/s)
#   ib_write_bw 64 KiB, 1 MiB, 4 MiB  average bandwidth (MB/s = 10^6 B/s;
#                                     perftest's MB/sec is 2^20 B/s)
#   ib_read_bw 1 MiB                  average bandwidth
# UCX: bench/ucx_baselines.sh's tag_lat 8 B, tag_bw 8 B, 64 KiB, 1 MiB,
# 4 MiB (ucx_perftest) for posix,cma,self and tcp,self.
# ROUNDS rounds (default 3, --quick 1), medians. Writes DIR/results.csv
# (suite,transport,test,size_bytes,value,unit) and DIR/README.md (the
# table); default DIR: bench/results/verbs-<date>. Needs root and a release
# build (cargo build --release -p ffverbs -p ffrouter; CARGO_TARGET_DIR is
# honoured). Run it under flock /tmp/ff-heavy.lock on a shared machine.
# Smoke run (no numbers worth keeping): N_LAT=200 N_BW8=200 N_BIG=20
# VERBS_BENCH_UCX=0 bench/verbs_bench.sh --quick --out /tmp/x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0
hosts=0
out=""
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --hosts) hosts=1 ;;
        --bin) bin=$2; shift ;;
        --out) out=$2; shift ;;
        *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
    esac
    shift
done
rounds=${ROUNDS:-$([[ $quick == 1 ]] && echo 1 || echo 3)}
out=${out:-$top/bench/results/verbs-$(date +%F)}
mkdir -p "$out"
. "$here/verbs_common.sh"
verbs_setup verbs_bench ib_write_bw
csv=$out/results.csv
echo "suite,transport,test,size_bytes,value,unit" >"$csv"
if [[ $hosts == 1 ]]; then
    # Server containers on host 0, clients on host 1 (twohosts.sh sets
    # ns0 ns1 work and the routers).
    verbs_two_hosts
    srv_ip=10.71.0.231 cli_ip=10.72.0.232
else
    verbs_one_host
    srv_ip=10.77.0.231 cli_ip=10.77.0.232
    srv_args=(--socket-dir "$vb/rt/t")
    cli_args=(--socket-dir "$vb/rt/t")
    names=vb
fi

# perftest TEST SIZE ITERS [FLAG...]: one pair in two containers; prints the
# result line.
perftest() {
    local t=$1 s=$2 n=$3 port=$((18000 + RANDOM % 1000))
    shift 3
    "$ffc" run --name "$names-s$$" --ip "$srv_ip/24" "${srv_args[@]}" -- \
        env LD_LIBRARY_PATH="$vb/lib" timeout 120 "$t" "$@" -d ff0 -s "$s" -n "$n" -p "$port" \
        >"$vb/s.log" 2>&1 </dev/null &
    local spid=$!
    sleep 1
    "$ffc" run --name "$names-c$$" --ip "$cli_ip/24" "${cli_args[@]}" -- \
        env LD_LIBRARY_PATH="$vb/lib" timeout 120 "$t" "$@" -d ff0 -s "$s" -n "$n" -p "$port" "$srv_ip" \
        >"$vb/c.log" 2>&1 </dev/null || { cat "$vb/c.log" "$vb/s.log" >&2; wait "$spid" || true; return 1; }
    wait "$spid" || { cat "$vb/s.log" >&2; return 1; }
    grep -A1 '#bytes' "$vb/c.log" | tail -1
}

n_lat=${N_LAT:-$([[ $quick == 1 ]] && echo 2000 || echo 10000)}
n_bw8=${N_BW8:-$([[ $quick == 1 ]] && echo 20000 || echo 200000)}
n_big=${N_BIG:-1000}
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    lats="ib_write_lat ib_send_lat ib_read_lat"
    [[ $hosts == 0 ]] || lats="ib_write_lat ib_send_lat"
    for t in $lats; do
        line=$(perftest "$t" 8 "$n_lat")
        echo "ff,ff0,$t,8,$(awk '{print $5}' <<<"$line"),us" >>"$csv"
    done
    # Waiting in ibv_get_cq_event (a completion channel) instead of polling.
    line=$(perftest ib_send_lat 8 "$n_lat" -e)
    echo "ff,ff0,ib_send_lat_events,8,$(awk '{print $5}' <<<"$line"),us" >>"$csv"
    line=$(perftest ib_send_bw 8 "$n_bw8")
    echo "ff,ff0,ib_send_bw,8,$(awk '{print $5}' <<<"$line"),Mmsg/s" >>"$csv"
    for s in 65536 1048576 4194304; do
        n=$((s >= 1048576 ? n_big : 10 * n_big))
        line=$(perftest ib_write_bw "$s" "$n")
        echo "ff,ff0,ib_write_bw,$s,$(awk '{printf "%.1f", $4 * 1.048576}' <<<"$line"),MB/s" >>"$csv"
    done
    if [[ $hosts == 0 ]]; then
        line=$(perftest ib_read_bw 1048576 "$n_big")
        echo "ff,ff0,ib_read_bw,1048576,$(awk '{printf "%.1f", $4 * 1.048576}' <<<"$line"),MB/s" >>"$csv"
    fi
    if [[ ${VERBS_BENCH_UCX:-1} == 0 ]]; then
        :
    elif [[ $hosts == 1 ]]; then
        UCX_BASELINE_NO_CPU=1 UCX_BASELINE_TESTS="lat bw8 bw64k bw1m bw4m" UCX_BASELINE_TLS="tcp,self" \
            UCX_BASELINE_BRIDGE=ffbr UCX_BASELINE_SERVER_NETNS="$ns0" UCX_BASELINE_CLIENT_NETNS="$ns1" \
            UCX_BASELINE_SERVER_IP=10.71.0.251/24 UCX_BASELINE_CLIENT_IP=10.72.0.252/24 \
            "$here/ucx_baselines.sh" "$vb/ucx.csv" >&2
    else
        UCX_BASELINE_NO_CPU=1 UCX_BASELINE_TESTS="lat bw8 bw64k bw1m bw4m" "$here/ucx_baselines.sh" "$vb/ucx.csv" >&2
    fi
done
[[ ! -e $vb/ucx.csv ]] || grep '^ucx,' "$vb/ucx.csv" | grep -v cpu_per_gb >>"$csv" || true

python3 - "$csv" "$out/README.md" "$rounds" "$hosts" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = {}
for r in rows:
    med.setdefault((r["transport"], r["test"], int(r["size_bytes"])), []).append(float(r["value"]))
med = {k: statistics.median(v) for k, v in med.items()}
def get(t, test, size):
    return med.get((t, test, size))
lines = ["| | ff0 (perftest) | UCX posix,cma | UCX tcp | ff0 / posix,cma | ff0 / tcp |", "|---|---:|---:|---:|---:|---:|"]
spec = [("8 B latency (us)", "ib_write_lat", 8, "tag_lat", 8, False),
        ("8 B message rate (Mmsg/s)", "ib_send_bw", 8, "tag_bw", 8, True),
        ("64 KiB (MB/s)", "ib_write_bw", 65536, "tag_bw", 65536, True),
        ("1 MiB (MB/s)", "ib_write_bw", 1048576, "tag_bw", 1048576, True),
        ("4 MiB (MB/s)", "ib_write_bw", 4194304, "tag_bw", 4194304, True)]
fmt = lambda v: "-" if v is None else (f"{v:,.2f}" if v < 100 else f"{v:,.0f}")
for label, ft, fs, ut, us, more_is_better in spec:
    f = get("ff0", ft, fs); p = get("posix,cma,self", ut, us); t = get("tcp,self", ut, us)
    ratio = lambda b: "-" if f is None or b is None or b == 0 else f"{f / b:.2f}x"
    lines.append(f"| {label} | {fmt(f)} | {fmt(p)} | {fmt(t)} | {ratio(p)} | {ratio(t)} |")
extra = [("ib_send_lat 8 B (us)", "ib_send_lat", 8), ("ib_send_lat -e 8 B (us, completion events)", "ib_send_lat_events", 8), ("ib_read_lat 8 B (us)", "ib_read_lat", 8), ("ib_read_bw 1 MiB (MB/s)", "ib_read_bw", 1048576)]
lines.append("")
lines += [f"- {l}: {fmt(get('ff0', t, s))}" for l, t, s in extra]
where = ("between two containers on two emulated hosts, through a router each (links sealed); UCX: ucx_perftest tag_lat/tag_bw, tcp,self between containers on the same two hosts"
         if sys.argv[4] == "1" else
         "between two containers through one router. UCX: ucx_perftest tag_lat/tag_bw (posix,cma,self between host processes; tcp,self between two containers)")
text = f"# perftest over ff0 vs UCX ({sys.argv[3]} round(s), medians)\n\nff0: Debian's perftest {where}. Latency: perftest's t_typical (half a round trip), UCX's p50 one-way.\n\n" + "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
