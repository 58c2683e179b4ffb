#!/bin/bash
# ucx_baselines.sh - UCX (ucx_perftest, UCP tag API) baselines for FreeFlow.
#
# Usage: bench/ucx_baselines.sh RESULTS.csv
#
# Appends rows "suite,transport,test,size_bytes,value,unit" (suite=ucx) to
# RESULTS.csv; writes the header first if the file is new or empty.  The
# transport field contains commas and is therefore CSV-quoted, e.g.
#   ucx,"posix,cma,self",tag_lat,8,0.166,us
#
# Transports (UCX_TLS values):
#   posix,cma,self  server and client are plain host processes talking to
#                   127.0.0.1 (same-host shared memory / CMA: what
#                   containers can NOT use)
#   tcp,self        server and client each in its own container made with
#                   tools/ffcontainer (own netns, veth on bridge ffbr0);
#                   UCX_NET_DEVICES=eth0
#   ff,self         the same containers, but UCX's transport is FreeFlow's
#                   (LD_PRELOAD=UCX_BASELINE_FF_LIB) through the routers
#                   whose tenant sockets are in UCX_BASELINE_SERVER_SOCKDIR
#                   and UCX_BASELINE_CLIENT_SOCKDIR (one router, or one per
#                   emulated host); the run fails unless UCX picked ff
# Tests and reported values:
#   tag_lat 8 B          p50 latency, us (one-way: ucx_perftest halves the
#                        round trip of ping-pong tests); tests lat4k and
#                        lat16k: the same at 4 KiB and 16 KiB (not by default)
#   tag_bw  8 B          message rate, Mmsg/s
#   tag_bw  64K/1M/4M    bandwidth, MB/s = 10^6 bytes/s
#   cpu_per_gb 64K/1M/4M CPU seconds the whole machine spent per GB moved
#                        (every process and the kernel, /proc/stat, over
#                        the client's run: its start, warm-up and measured
#                        iterations; bytes of warm-up and measured ones);
#                        not with UCX_BASELINE_NO_CPU set (a loaded machine)
#
# Environment:
#   UCX_BASELINE_TLS    transports to run (default "posix,cma,self tcp,self")
#   UCX_BASELINE_TESTS  tests to run, from "lat bw8 bw64k bw1m bw4m"
#                       (default) and "lat4k lat16k"
#   UCX_BASELINE_SERVER_IP / UCX_BASELINE_CLIENT_IP  container addresses for
#                       tcp,self (default 10.77.0.251/24 and 10.77.0.252/24)
#   UCX_BASELINE_BRIDGE bridge for the containers (default ffbr0)
#   UCX_BASELINE_SERVER_CPUS / UCX_BASELINE_CLIENT_CPUS  pin the server's
#                       / client's container to these CPUs (taskset -c list)
#   UCX_BASELINE_SERVER_NETNS / UCX_BASELINE_CLIENT_NETNS  "host" network
#                       namespaces the containers' bridges live in
#                       (ffcontainer --host-netns; default: the root netns)
#   UCX_BASELINE_FF_LIB libuct_ff.so for ff,self (default
#                       target/release/libuct_ff.so)
#   UCX_BASELINE_SERVER_SOCKDIR / UCX_BASELINE_CLIENT_SOCKDIR  for ff,self:
#                       the host directories holding the tenant's
#                       ffrouter.sock (ffcontainer --socket-dir)
#   UCX_BASELINE_SUITE  suite column of the rows (default ucx)
#   UCX_BASELINE_PORT   first TCP port to use (default random 20000-39999);
#                       every run uses the next port
# Needs root (containers).  Each ucx_perftest process runs under timeout 60.
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

[[ $# -eq 1 && $1 != -h && $1 != --help ]] || usage
OUT=$1

HERE=$(cd "$(dirname "$0")" && pwd)
FFC=$HERE/../tools/ffcontainer
TLS_LIST=${UCX_BASELINE_TLS:-"posix,cma,self tcp,self"}
TESTS=${UCX_BASELINE_TESTS:-"lat bw8 bw64k bw1m bw4m"}
SRV_IP=${UCX_BASELINE_SERVER_IP:-10.77.0.251/24}
CLI_IP=${UCX_BASELINE_CLIENT_IP:-10.77.0.252/24}
BRIDGE=${UCX_BASELINE_BRIDGE:-ffbr0}
SRV_HOSTNS=(${UCX_BASELINE_SERVER_NETNS:+--host-netns "$UCX_BASELINE_SERVER_NETNS"})
# Pinned containers (taskset CPU lists): each emulated host on its own CPUs.
SRV_PIN=(${UCX_BASELINE_SERVER_CPUS:+taskset -c "$UCX_BASELINE_SERVER_CPUS"})
CLI_PIN=(${UCX_BASELINE_CLIENT_CPUS:+taskset -c "$UCX_BASELINE_CLIENT_CPUS"})
CLI_HOSTNS=(${UCX_BASELINE_CLIENT_NETNS:+--host-netns "$UCX_BASELINE_CLIENT_NETNS"})
FF_LIB=${UCX_BASELINE_FF_LIB:-$HERE/../target/release/libuct_ff.so}
SRV_SOCK=(${UCX_BASELINE_SERVER_SOCKDIR:+--socket-dir "$UCX_BASELINE_SERVER_SOCKDIR"})
CLI_SOCK=(${UCX_BASELINE_CLIENT_SOCKDIR:+--socket-dir "$UCX_BASELINE_CLIENT_SOCKDIR"})
SUITE=${UCX_BASELINE_SUITE:-ucx}
PORT=${UCX_BASELINE_PORT:-$((20000 + RANDOM % 20000))}
PERF_TIMEOUT=60

command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found" >&2; exit 1; }
[[ -x $FFC ]] || { echo "$FFC not found" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ucx_baselines.XXXXXX)
SRV_PID=        # PID of the background server (process or ffcontainer)
SRV_PIDFILE=$WORK/server.pid
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# test key -> "ucx_perftest-test size"
test_args() {
    case "$1" in
        lat) echo "tag_lat 8" ;;
        lat4k) echo "tag_lat 4096" ;;
        lat16k) echo "tag_lat 16384" ;;
        bw8) echo "tag_bw 8" ;;
        bw64k) echo "tag_bw 65536" ;;
        bw1m) echo "tag_bw 1048576" ;;
        bw4m) echo "tag_bw 4194304" ;;
        *) echo "unknown test '$1' in UCX_BASELINE_TESTS" >&2; return 1 ;;
    esac
}

# Iteration counts, chosen for roughly 1-3 s per run on a 2-core VM.
iters() {
    local tls=$1 key=$2
    if [[ $tls == tcp* || $tls == ff* ]]; then
        case "$key" in
            lat) echo 100000 ;; bw8) echo 300000 ;; bw64k) echo 20000 ;;
            bw1m) echo 2000 ;; bw4m) echo 500 ;; lat4k | lat16k) echo 50000 ;;
        esac
    else
        case "$key" in
            lat) echo 1000000 ;; bw8) echo 10000000 ;; bw64k) echo 200000 ;;
            bw1m) echo 10000 ;; bw4m) echo 2500 ;; lat4k | lat16k) echo 500000 ;;
        esac
    fi
}

stop_server() {
    if [[ -n $SRV_PID ]]; then
        if [[ -s $SRV_PIDFILE ]]; then
            kill -KILL "$(cat "$SRV_PIDFILE")" 2>/dev/null || true
        fi
        kill -TERM "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
        SRV_PID=
    fi
    rm -f "$SRV_PIDFILE"
}

# True once something listens on TCP port $2 in netns $1 ("" = root netns).
listening() {
    local ns=$1 port=$2 out
    if [[ -n $ns ]]; then
        out=$(ip netns exec "$ns" ss -ltnH "sport = :$port" 2>/dev/null || true)
    else
        out=$(ss -ltnH "sport = :$port" 2>/dev/null || true)
    fi
    [[ -n $out ]]
}

# start_server TLS PORT; sets SRV_PID, returns when it listens.
start_server() {
    local tls=$1 port=$2 ns= i
    if [[ $tls == tcp* ]]; then
        ns=ffc-ucxb-s$$
        UCX_TLS=$tls UCX_NET_DEVICES=eth0 ${SRV_PIN[@]+"${SRV_PIN[@]}"} "$FFC" run --name "ucxb-s$$" --ip "$SRV_IP" \
            --bridge "$BRIDGE" "${SRV_HOSTNS[@]}" --pidfile "$SRV_PIDFILE" -- \
            timeout "$PERF_TIMEOUT" ucx_perftest -p "$port" \
            >"$WORK/server.log" 2>&1 </dev/null &
    elif [[ $tls == ff* ]]; then
        ns=ffc-ucxb-s$$
        UCX_TLS=$tls ${SRV_PIN[@]+"${SRV_PIN[@]}"} "$FFC" run --name "ucxb-s$$" --ip "$SRV_IP" \
            --bridge "$BRIDGE" "${SRV_HOSTNS[@]}" "${SRV_SOCK[@]}" --pidfile "$SRV_PIDFILE" -- \
            env LD_PRELOAD="$FF_LIB" timeout "$PERF_TIMEOUT" ucx_perftest -p "$port" \
            >"$WORK/server.log" 2>&1 </dev/null &
    else
        UCX_TLS=$tls timeout "$PERF_TIMEOUT" ucx_perftest -p "$port" \
            >"$WORK/server.log" 2>&1 </dev/null &
    fi
    SRV_PID=$!
    for ((i = 0; i < 100; i++)); do
        listening "$ns" "$port" && return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not start listening on port $port; log:" >&2
    cat "$WORK/server.log" >&2 || true
    return 1
}

# For tcp: fails (with what to do) unless the client container reaches the
# server's address: a SYN to a closed port must be refused, not dropped (a
# host firewall that drops bridged traffic, such as Docker's FORWARD DROP
# policy, would make every run hang in connect() until its timeout).
PROBED=
probe_tcp() {
    local out rc=0
    out=$("$FFC" run --name "ucxb-p$$" --ip "$CLI_IP" --bridge "$BRIDGE" "${CLI_HOSTNS[@]}" -- \
        timeout 5 bash -c "exec 3<>/dev/tcp/${SRV_IP%/*}/1" 2>&1 </dev/null) || rc=$?
    if [[ $rc -eq 124 ]]; then
        echo "ucx_baselines: container ${CLI_IP%/*} cannot reach ${SRV_IP%/*} over bridge $BRIDGE" \
             "(TCP SYN unanswered for 5 s): a firewall drops traffic between the bridge's ports." \
             "Docker sets the iptables FORWARD policy to DROP; tools/ffcontainer adds an ACCEPT rule" \
             "for its bridge when the iptables command is installed. Check: iptables -S FORWARD" >&2
        return 1
    fi
    grep -q 'refused' <<<"$out" || echo "ucx_baselines: tcp probe to ${SRV_IP%/*}: unexpected: $out" >&2
    return 0
}

# run_client TLS TEST SIZE ITERS WARMUP PORT > output
run_client() {
    local tls=$1 test=$2 size=$3 n=$4 w=$5 port=$6
    if [[ $tls == tcp* ]]; then
        UCX_TLS=$tls UCX_NET_DEVICES=eth0 ${CLI_PIN[@]+"${CLI_PIN[@]}"} "$FFC" run --name "ucxb-c$$" --ip "$CLI_IP" \
            --bridge "$BRIDGE" "${CLI_HOSTNS[@]}" -- \
            timeout "$PERF_TIMEOUT" ucx_perftest "${SRV_IP%/*}" -p "$port" \
            -t "$test" -s "$size" -n "$n" -w "$w" -f </dev/null
    elif [[ $tls == ff* ]]; then
        UCX_TLS=$tls UCX_LOG_LEVEL=info ${CLI_PIN[@]+"${CLI_PIN[@]}"} "$FFC" run --name "ucxb-c$$" --ip "$CLI_IP" \
            --bridge "$BRIDGE" "${CLI_HOSTNS[@]}" "${CLI_SOCK[@]}" -- \
            env LD_PRELOAD="$FF_LIB" timeout "$PERF_TIMEOUT" ucx_perftest "${SRV_IP%/*}" -p "$port" \
            -t "$test" -s "$size" -n "$n" -w "$w" -f </dev/null
    else
        UCX_TLS=$tls timeout "$PERF_TIMEOUT" ucx_perftest 127.0.0.1 -p "$port" \
            -t "$test" -s "$size" -n "$n" -w "$w" -f </dev/null
    fi
}

# With -f, ucx_perftest prints a table header and then one line of numbers:
#   "                  100000      0.166     0.178     0.178       42.77      42.77     5606346     5606346"
#    iterations | latency usec: p50(typical) average overall |
#    bandwidth MB/s: average overall | message rate msg/s: average overall
# Latency of ping-pong tests (tag_lat) is one-way = round trip / 2.
# "MB/s" in ucx_perftest is really MiB/s (bytes / 2^20 / s): e.g. 8 B *
# 5606346 msg/s = 44.85e6 B/s = 42.77 "MB/s".  We convert to 10^6 B/s.
# Prints "p50_us msgrate_msg_s bw_mib_s" (overall values) of the final line.
parse_final() {
    awk 'NF == 8 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9.]+$/ { last = $2 " " $8 " " $6 }
         END { if (last == "") exit 1; print last }'
}

busy_jiffies() {  # busy time so far, in clock ticks: the benchmark's cgroup (FF_BENCH_CPU_CGROUP) or the machine
    if [ -n "${FF_BENCH_CPU_CGROUP:-}" ]; then
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", $1 * hz / 1e9 }' "$FF_BENCH_CPU_CGROUP/cpuacct.usage"
    else
        awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
    fi
}

emit() {  # transport test size value unit
    printf '%s,"%s",%s,%s,%s,%s\n' "$SUITE" "$1" "$2" "$3" "$4" "$5" | tee -a "$OUT"
}

for key in $TESTS; do test_args "$key" >/dev/null; done
for tls in $TLS_LIST; do
    case "$tls" in
        tcp,self|posix,cma,self) ;;
        ff,self) [[ -e $FF_LIB ]] || { echo "$FF_LIB not found: cargo build --release -p ucx-transport" >&2; exit 1; } ;;
        *) echo "unsupported transport '$tls' in UCX_BASELINE_TLS" >&2; exit 1 ;;
    esac
done

if [[ ! -s $OUT ]]; then
    echo "suite,transport,test,size_bytes,value,unit" >>"$OUT"
fi

FAILED=0
for tls in $TLS_LIST; do
    for key in $TESTS; do
        read -r test size <<<"$(test_args "$key")"
        n=$(iters "$tls" "$key")
        w=$(( n / 10 > 10 ? n / 10 : 10 ))
        ok=0
        for attempt in 1 2 3; do
            PORT=$((PORT + 1))
            if ! start_server "$tls" "$PORT"; then
                stop_server
                continue
            fi
            if [[ $tls == tcp* && $PROBED != "$tls" ]]; then
                probe_tcp || exit 1
                PROBED=$tls
            fi
            j0=$(busy_jiffies)
            out=$(run_client "$tls" "$test" "$size" "$n" "$w" "$PORT" 2>&1) || true
            j1=$(busy_jiffies)
            stop_server
            if [[ $tls == ff* ]] && ! grep -q 'tag(ff/router)' <<<"$out"; then
                echo "ucx_baselines: UCX did not pick the ff transport" >&2
            elif vals=$(parse_final <<<"$out"); then
                ok=1
                break
            fi
            echo "ucx_baselines: $tls $test $size attempt $attempt failed:" >&2
            tail -5 <<<"$out" >&2
        done
        if [[ $ok -eq 0 ]]; then
            FAILED=$((FAILED + 1))
            continue
        fi
        read -r p50 rate bw_mib <<<"$vals"
        case "$key" in
            lat*) emit "$tls" "$test" "$size" "$p50" us ;;
            bw8) emit "$tls" "$test" "$size" "$(awk -v r="$rate" 'BEGIN { printf "%.3f", r / 1e6 }')" Mmsg/s ;;
            *)
                emit "$tls" "$test" "$size" "$(awk -v b="$bw_mib" 'BEGIN { printf "%.1f", b * 1048576 / 1e6 }')" MB/s
                [[ -n ${UCX_BASELINE_NO_CPU:-} ]] || emit "$tls" cpu_per_gb "$size" \
                    "$(awk -v a="$j0" -v b="$j1" -v hz="$(getconf CLK_TCK)" -v s="$size" -v n="$((n + w))" \
                        'BEGIN { printf "%.4f", (b - a) / hz / (s * n / 1e9) }')" s/GB
                ;;
        esac
    done
done
if [[ $FAILED -gt 0 ]]; then
    echo "ucx_baselines: $FAILED run(s) failed" >&2
    exit 1
fi
