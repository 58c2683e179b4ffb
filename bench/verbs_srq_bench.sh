#!/bin/bash
# verbs_srq_bench.sh - UCX 1.13's own verbs transports over ff0 (ffverbs
# as libibverbs.so.1, LD_LIBRARY_PATH; a device node from tools/ffuverbs):
# UCP tag tests with UCX_TLS=rc_verbs,ud_verbs:aux,self (rc_verbs carries
# the tags, ud_verbs only the wire-up) against UCX_TLS=posix,cma,self and
# tcp,self, between two host processes on one host (one router); the
# transports alternate within each round.
#
# Usage: bench/verbs_srq_bench.sh [--rounds N] [--bin DIR] [--out DIR]
#
# Tests (ucx_perftest, UCP):
#   tag_lat 8 B               p50 latency, us (half the round trip)
#   tag_bw 8 B                message rate, Mmsg/s (overall)
#   tag_bw 64 KiB, 4 MiB      bandwidth, MB/s = 10^6 B/s (overall; UCX
#                             prints 2^20 B/s, converted)
# Writes DIR/results.csv (round,transport,test,size_bytes,value,unit) and
# DIR/medians.csv; default DIR: bench/results/verbs-srq-<date>. Needs root,
# UCX (ucx-utils) and a release build (cargo build --release -p ffverbs
# -p ffrouter; CARGO_TARGET_DIR is honoured). Run it under
# flock /tmp/ff-heavy.lock on a shared machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=3
out=""
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --bin) bin=$2; shift ;;
        --out) out=$2; shift ;;
        *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$top/bench/results/verbs-srq-$(date +%F)}
mkdir -p "$out"
. "$here/verbs_common.sh"
verbs_setup verbs_srq_bench ucx_perftest
verbs_one_host
port=$((20000 + RANDOM % 20000))

listening() { # port
    local p; p=$(printf ':%04X ' "$1")
    awk -v p="$p" '($2 " ") ~ p && $4 == "0A" { f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6
}

# run TRANSPORT TEST SIZE ITERS PORT: prints the client's Final line.
run() {
    local tl=$1 t=$2 size=$3 n=$4 port=$5 tls wrap=() net
    case "$tl" in
        rc_verbs) tls=rc_verbs,ud_verbs:aux,self; net=ff0:1; wrap=("$top/tools/ffuverbs") ;;
        posix_cma) tls=posix,cma,self; net=all ;;
        tcp) tls=tcp,self; net=lo ;;
    esac
    local args=(-t "$t" -s "$size" -n "$n" -p "$port")
    env LD_LIBRARY_PATH="$vb/lib" FF_ROUTER_SOCKET="$vb/rt/t/ffrouter.sock" UCX_TLS="$tls" UCX_NET_DEVICES="$net" \
        "${wrap[@]}" timeout 120 ucx_perftest "${args[@]}" >"$vb/srv.txt" 2>&1 &
    local srv=$! i
    for i in $(seq 200); do listening "$port" && break; sleep 0.05; done
    env LD_LIBRARY_PATH="$vb/lib" FF_ROUTER_SOCKET="$vb/rt/t/ffrouter.sock" UCX_TLS="$tls" UCX_NET_DEVICES="$net" \
        "${wrap[@]}" timeout 120 ucx_perftest "${args[@]}" 127.0.0.1 >"$vb/cli.txt" 2>&1 || true
    wait "$srv" || true
    grep '^Final:' "$vb/cli.txt" || { echo "FAILED $tl $t $size:" >&2; tail -5 "$vb/cli.txt" "$vb/srv.txt" >&2; echo "Final: 0 nan nan nan nan nan nan nan"; }
}

csv=$out/results.csv
echo "round,transport,test,size_bytes,value,unit" >"$csv"
# test size iterations (rc_verbs posix_cma tcp)
plan=(
    "tag_lat 8 20000,1000000,100000"
    "tag_bw 8 300000,5000000,300000"
    "tag_bw 65536 20000,200000,20000"
    "tag_bw 4194304 500,2500,500"
)
tla=(rc_verbs posix_cma tcp)
for r in $(seq "$rounds"); do
    for line in "${plan[@]}"; do
        read -r t size iters <<<"$line"
        IFS=, read -r -a ita <<<"$iters"
        for i in "${!tla[@]}"; do
            port=$((port + 1))
            f=$(run "${tla[$i]}" "$t" "$size" "${ita[$i]}" "$port")
            # Final: iters p50 avg overall bw_avg bw_overall rate_avg rate_overall
            case "$t/$size" in
                tag_lat/*) v=$(awk '{print $3}' <<<"$f"); u=us ;;
                tag_bw/8) v=$(awk '{printf "%.3f", $9 / 1e6}' <<<"$f"); u=Mmsg/s ;;
                *) v=$(awk '{printf "%.0f", $7 * 1048576 / 1e6}' <<<"$f"); u=MB/s ;;
            esac
            echo "$r,${tla[$i]},$t,$size,$v,$u" | tee -a "$csv"
        done
    done
done
python3 "$here/medians.py" "$csv" "$out/medians.csv"
