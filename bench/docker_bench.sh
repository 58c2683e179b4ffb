#!/bin/bash
# bench/docker_bench.sh - ff vs UCX tcp between Docker containers, in one
# run: FreeFlow as it is deployed (testkit/docker_hosts.sh: the router as a
# container with k8s/ffrouter.yaml's image and flags, training containers
# as nobody without capabilities, private IPC, only their tenant's socket
# directory), on one host or across two emulated hosts (two router
# containers on their own Docker network, links sealed with a peer secret).
#
#   bench/docker_bench.sh [--hosts 1|2] [--rounds N] [--quick] [--out DIR]
#
# Rows (CSV suite,transport,test,size_bytes,value,unit, every round in
# results.csv; README.md has the medians, ratios to tcp,self and plots, by
# bench/plot.py):
#   ff        ffbench between container A (host 0) and B (host HOSTS-1)
#   ff,self   ucx_perftest (UCP tag API), UCX_TLS=ff,self with libuct_ff.so
#             preloaded: through the router container(s)
#   tcp,self  ucx_perftest, UCX_TLS=tcp,self, the same two containers over
#             the Docker bridge that carries ucx_perftest's own start-up
#             (both hosts' training containers are on it: the emulated
#             hosts share this machine's kernel, so "across hosts" means
#             through both routers for ff only)
# tag_lat 8 B (p50, us), tag_bw 8 B (Mmsg/s), 64 KiB, 1 MiB, 4 MiB (MB/s =
# 10^6 B/s), each bandwidth row with CPU seconds per GB moved (the whole
# machine, /proc/stat, over the client's run: run it on an idle machine).
# Needs root, a running dockerd and images built from release binaries
# (scripts/docker.sh ensure; scripts/docker.sh images target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
# shellcheck source=../testkit/docker_hosts.sh
. "$top/testkit/docker_hosts.sh"
hosts=1 rounds=3 quick=0 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,26p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$hosts" = 1 ] || [ "$hosts" = 2 ] || { echo "--hosts 1 or 2" >&2; exit 2; }
[ -n "$out" ] || out="$top/bench/results/docker-$hosts-host-$(date +%Y-%m-%d)"
mkdir -p "$out"
csv=$out/results.csv
echo "suite,transport,test,size_bytes,value,unit" > "$csv"

dh_init ffdb
dh_routers "$hosts"
dh_network ranks
ip_a="${dh_subnet%.0/24}.21" ip_b="${dh_subnet%.0/24}.22"
net_a=(--network "$dh_id-ranks" --ip "$ip_a") net_b=(--network "$dh_id-ranks" --ip "$ip_b")
b_host=$((hosts - 1))
lib=/usr/local/lib/freeflow/libuct_ff.so
echo "== $hosts host(s): router container(s) up; training containers $ip_a (host 0), $ip_b (host $b_host)" >&2

busy_jiffies() {  # the machine's busy time so far, in clock ticks
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
cpu_per_gb() {  # cpu_per_gb J0 J1 BYTES
    awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" -v n="$3" 'BEGIN { printf "%.3f", (b - a) / hz / (n / 1e9) }'
}
row() { echo "$1,$2,$3,$4,$5,$6" >> "$csv"; }

# ff_pair MODE SIZE ITERS: ffbench serve in A, connect from B; records rows.
ff_pair() {
    local mode=$1 size=$2 iters=$3 sout=$dh_work/srv.out r j0 j1
    dh_rank "$dh_id-a" 0 "${net_a[@]}" -- ffbench serve "$mode" --size "$size" --iters "$iters" --window 32 >"$sout" 2>&1 &
    local spid=$! h=""
    for _ in $(seq 400); do
        h=$(sed -n 's/^HANDLE //p' "$sout" | head -1)
        [ -n "$h" ] && break
        sleep 0.05
    done
    [ -n "$h" ] || { cat "$sout" >&2; fail "ffbench server printed no handle"; }
    j0=$(busy_jiffies)
    r=$(dh_rank "$dh_id-b" "$b_host" "${net_b[@]}" -- ffbench connect "$mode" --size "$size" --iters "$iters" --window 32 --handle "$h" | grep '^RESULT') ||
        fail "ffbench $mode $size failed"
    j1=$(busy_jiffies)
    wait "$spid" || fail "ffbench server failed: $(cat "$sout")"
    val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$r"; }
    case "$mode,$size" in
        pingpong,*) row ff ff tag_lat 8 "$(val half_rtt_us_p50)" us ;;
        stream,8) row ff ff tag_bw 8 "$(val mmsg_per_s)" Mmsg/s ;;
        *) row ff ff tag_bw "$size" "$(val mb_per_s)" MB/s
           row ff ff cpu_per_gb "$size" "$(cpu_per_gb "$j0" "$j1" $((size * iters)))" s/GB ;;
    esac
}

# ucx_pair TLS TEST SIZE N: ucx_perftest server in A, client in B.
port=$((20000 + RANDOM % 20000))
ucx_pair() {
    local tls=$1 test=$2 size=$3 n=$4 w=$(($4 / 10)) env=(-e "UCX_TLS=$1") log j0 j1 vals
    port=$((port + 1))
    [[ $tls == ff* ]] && env+=(-e "LD_PRELOAD=$lib" -e UCX_LOG_LEVEL=info)
    [[ $tls == tcp* ]] && env+=(-e UCX_NET_DEVICES=eth0)
    dh_rank "$dh_id-a" 0 "${net_a[@]}" "${env[@]}" -- timeout 120 ucx_perftest -p "$port" >"$dh_work/usrv.log" 2>&1 &
    local spid=$!
    for _ in $(seq 200); do
        docker exec "$dh_id-a" sh -c "grep -qiE ':$(printf %04X "$port") [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6" 2>/dev/null && break
        sleep 0.05
    done
    j0=$(busy_jiffies)
    log=$(dh_rank "$dh_id-b" "$b_host" "${net_b[@]}" "${env[@]}" -- \
        timeout 120 ucx_perftest "$ip_a" -p "$port" -t "$test" -s "$size" -n "$n" -w "$w" -f 2>&1) || true
    j1=$(busy_jiffies)
    wait "$spid" 2>/dev/null || true
    if [[ $tls == ff* ]] && ! grep -q 'tag(ff/router)' <<<"$log"; then
        echo "$tls $test $size: UCX did not pick ff:" >&2; tail -5 <<<"$log" >&2; return 0
    fi
    vals=$(awk 'NF == 8 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9.]+$/ { last = $2 " " $6 " " $8 } END { print last }' <<<"$log")
    [ -n "$vals" ] || { echo "$tls $test $size failed:" >&2; tail -5 <<<"$log" >&2; return 0; }
    read -r p50 mib rate <<<"$vals"
    case "$test,$size" in
        tag_lat,*) row ucx "\"$tls\"" tag_lat 8 "$p50" us ;;
        tag_bw,8) row ucx "\"$tls\"" tag_bw 8 "$(awk -v r="$rate" 'BEGIN { printf "%.3f", r / 1e6 }')" Mmsg/s ;;
        *) row ucx "\"$tls\"" tag_bw "$size" "$(awk -v b="$mib" 'BEGIN { printf "%.1f", b * 1048576 / 1e6 }')" MB/s
           row ucx "\"$tls\"" cpu_per_gb "$size" "$(cpu_per_gb "$j0" "$j1" $((size * (n + w))))" s/GB ;;
    esac
}

s=$([ $quick = 1 ] && echo 1 || echo 3)
for round in $(seq "$rounds"); do
    echo "== round $round of $rounds" >&2
    ff_pair pingpong 8 $((50000 * s))
    for spec in "8 $((300000 * s))" "65536 $((10000 * s))" "1048576 $((1000 * s))" "4194304 $((200 * s))"; do
        # shellcheck disable=SC2086
        ff_pair stream $spec
    done
    for tls in ff,self tcp,self; do
        ucx_pair "$tls" tag_lat 8 $((30000 * s))
        for spec in "8 $((100000 * s))" "65536 $((5000 * s))" "1048576 $((500 * s))" "4194304 $((100 * s))"; do
            # shellcheck disable=SC2086
            ucx_pair "$tls" tag_bw $spec
        done
    done
done

{
    echo "# ff vs UCX tcp between Docker containers, $hosts host(s), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown); UCX $(ucx_info -v | sed -n 's/^# Version //p'); Docker $(docker version --format '{{.Server.Version}}')"
    echo "- $([ "$hosts" = 2 ] && echo "two router containers (links sealed), training containers on host 0 and host 1" || echo "one router container, two training containers")"
    echo "- command: bench/docker_bench.sh --hosts $hosts --rounds $rounds$([ $quick = 1 ] && echo ' --quick'); medians of the rounds"
    echo
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot"
} | tee "$out/README.md"
echo "results: $out" >&2
