#!/bin/bash
# verbs_ucx_bench.sh - UCX 1.13's own verbs transport over ff0 between
# containers: ucx_perftest (UCP) with UCX_TLS=rc_v,self (UCX's alias for
# rc_verbs with ud_verbs as the wire-up's auxiliary transport; the tags go
# on rc_verbs) in two containers (tools/ffcontainer, each command through
# tools/ffuverbs for the device node; ffverbs as libibverbs.so.1 by
# LD_LIBRARY_PATH), against UCX_TLS=posix,cma,self (two host processes:
# shared memory cannot cross the containers' IPC, PID and /dev/shm
# namespaces) and tcp,self (two containers over their veths), alternating
# within each round, in one run.
#
# Usage: bench/verbs_ucx_bench.sh [--hosts] [--rounds N] [--bin DIR] [--out DIR]
#
# --hosts: the server's container on emulated host 0, the client's on host
# 1 (bench/twohosts.sh: a network namespace and a router each, links
# sealed); rc_verbs against tcp,self between the same two hosts.
# Tests (ucx_perftest, UCP):
#   tag_lat 8 B                     p50 latency, us (half the round trip)
#   tag_bw 64 KiB, 1 MiB, 4 MiB     bandwidth, MB/s = 10^6 B/s (overall;
#                                   UCX prints 2^20 B/s, converted)
# Writes DIR/results.csv (round,transport,test,size_bytes,value,unit) and
# DIR/medians.csv (median, min, max); default DIR:
# bench/results/verbs-containers-<date>[-hosts]. Needs root, UCX
# (ucx-utils) and a release build (cargo build --release -p ffverbs -p
# ffrouter; CARGO_TARGET_DIR is honoured). Run it under
# flock /tmp/ff-heavy.lock on a shared machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=3
hosts=0
out=""
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --hosts) hosts=1 ;;
        --rounds) rounds=$2; shift ;;
        --bin) bin=$2; shift ;;
        --out) out=$2; shift ;;
        *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$top/bench/results/verbs-containers-$(date +%F)$([[ $hosts == 1 ]] && echo -hosts)}
mkdir -p "$out"
. "$here/verbs_common.sh"
verbs_setup verbs_ucx_bench ucx_perftest
if [[ $hosts == 1 ]]; then
    verbs_two_hosts
    srv_net=10.71.0 cli_net=10.72.0
    tla=(rc_verbs tcp)
else
    verbs_one_host
    srv_net=10.77.0 cli_net=10.77.0
    srv_args=(--socket-dir "$vb/rt/t")
    cli_args=(--socket-dir "$vb/rt/t")
    names=vu$$
    tla=(rc_verbs posix_cma tcp)
fi
port=13337

# The server's container prints LISTENING once ucx_perftest listens (its
# client does not retry a refused connect).
wait_listen='"$@" & p=$!; until ss -Hltn | grep -q ":$PORT "; do kill -0 $p 2>/dev/null || break; sleep 0.05; done; echo LISTENING; wait $p'

# run TRANSPORT TEST SIZE ITERS: prints the client's Final line. Each
# pair of containers gets addresses the last pair did not have ($pair, set
# by the caller: a container's veth may outlive it for a moment).
pair=0
run() {
    local tl=$1 t=$2 size=$3 n=$4 i
    local srv_ip=$srv_net.$((220 + pair)) cli_ip=$cli_net.$((240 + pair))
    local args=(timeout 120 ucx_perftest -t "$t" -s "$size" -n "$n" -p "$port")
    if [[ $tl == posix_cma ]]; then
        # This host's network namespace: a port nothing else listens on.
        local hp=$((20000 + RANDOM % 20000))
        while ss -Hltn | grep -q ":$hp "; do hp=$((20000 + RANDOM % 20000)); done
        env UCX_TLS=posix,cma,self timeout 120 ucx_perftest -t "$t" -s "$size" -n "$n" -p "$hp" >"$vb/srv.txt" 2>&1 &
        local srv=$!
        for i in $(seq 200); do ss -Hltn | grep -q ":$hp " && break; sleep 0.05; done
        env UCX_TLS=posix,cma,self timeout 120 ucx_perftest -t "$t" -s "$size" -n "$n" -p "$hp" 127.0.0.1 >"$vb/cli.txt" 2>&1 || true
        wait "$srv" || true
    else
        local envv=(env LD_LIBRARY_PATH="$vb/lib")
        case "$tl" in
            rc_verbs) envv+=(UCX_TLS=rc_v,self UCX_NET_DEVICES=ff0:1 "$top/tools/ffuverbs") ;;
            tcp) envv+=(UCX_TLS=tcp,self UCX_NET_DEVICES=eth0) ;;
        esac
        "$ffc" run --name "$names-s" --ip "$srv_ip/24" "${srv_args[@]}" -- \
            env PORT="$port" sh -c "$wait_listen" sh "${envv[@]}" "${args[@]}" >"$vb/srv.txt" 2>&1 </dev/null &
        local srv=$!
        for i in $(seq 400); do grep -q LISTENING "$vb/srv.txt" && break; sleep 0.05; done
        # A refused connect (seen once in a while across hosts right after
        # the server listens) is tried again: the server still waits.
        for i in 1 2 3 4 5; do
            "$ffc" run --name "$names-c" --ip "$cli_ip/24" "${cli_args[@]}" -- \
                "${envv[@]}" "${args[@]}" "$srv_ip" >"$vb/cli.txt" 2>&1 </dev/null || true
            grep -q 'connect() failed: Connection refused' "$vb/cli.txt" || break
            echo "$tl $t $size: connect refused, again" >&2
            sleep 0.5
        done
        wait "$srv" || true
    fi
    grep '^Final:' "$vb/cli.txt" || { echo "FAILED $tl $t $size:" >&2; tail -5 "$vb/cli.txt" "$vb/srv.txt" >&2; echo "Final: 0 nan nan nan nan nan nan nan"; }
}

csv=$out/results.csv
echo "round,transport,test,size_bytes,value,unit" >"$csv"
# test size iterations(rc_verbs, posix_cma, tcp)
if [[ $hosts == 1 ]]; then
    plan=("tag_lat 8 5000,0,5000" "tag_bw 65536 5000,0,5000" "tag_bw 1048576 1000,0,1000" "tag_bw 4194304 250,0,250")
else
    plan=("tag_lat 8 20000,200000,20000" "tag_bw 65536 20000,50000,10000" "tag_bw 1048576 2000,5000,1000" "tag_bw 4194304 500,1000,250")
fi
for r in $(seq "$rounds"); do
    echo "round $r/$rounds ($(uptime))" >&2
    for line in "${plan[@]}"; do
        read -r t size iters <<<"$line"
        IFS=, read -r rc_n pc_n tcp_n <<<"$iters"
        for tl in "${tla[@]}"; do
            case $tl in rc_verbs) n=$rc_n ;; posix_cma) n=$pc_n ;; tcp) n=$tcp_n ;; esac
            pair=$(((pair + 1) % 10))
            f=$(run "$tl" "$t" "$size" "$n")
            # Final: iters p50 avg overall bw_avg bw_overall rate_avg rate_overall
            case "$t" in
                tag_lat) v=$(awk '{print $3}' <<<"$f"); u=us ;;
                *) v=$(awk '{printf "%.0f", $7 * 1048576 / 1e6}' <<<"$f"); u=MB/s ;;
            esac
            echo "$r,$tl,$t,$size,$v,$u" | tee -a "$csv"
        done
    done
done
python3 "$here/medians.py" "$csv" "$out/medians.csv"
