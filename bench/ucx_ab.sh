#!/bin/bash
# ucx_ab.sh - A/B comparison of two libuct_ff.so builds with ucx_perftest,
# two host processes on one host (server on CPU 0, client on CPU 1) through
# one ffrouter, UCX_TLS=ff,self. Rounds interleave A and B so that noise
# hits both alike.
#
# Usage: bench/ucx_ab.sh LIB_A LIB_B [ROUNDS] [OUT.csv]
#   FFROUTER=path (default target/release/ffrouter)
#   UCX_AB_ONLY="tag_lat_8B tag_bw_64KiB ..." runs only the tests named
# Prints (and writes OUT.csv): build,round,test,p50_us,MBps,msgps,cpu_s_per_gb
# (ucx_perftest's overall columns; its "MB/s" is MiB/s; CPU seconds of the
# whole machine, from /proc/stat over the client's run, per GB it moved). UCT-level tests
# use -x ff -d router; tag_* are UCP. Needs a release build.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2") rounds=${3:-5} out=${4:-/dev/null}
router=${FFROUTER:-$top/target/release/ffrouter}
work=$(mktemp -d /tmp/ucx_ab.XXXXXX)
rpid="" spid=""
cleanup() {
    [[ -n $spid ]] && kill "$spid" 2>/dev/null || true
    [[ -n $rpid ]] && kill "$rpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
"$router" --tenant "ab=$work/ffrouter.sock" --log-level warn &
rpid=$!
for _ in $(seq 100); do [[ -S $work/ffrouter.sock ]] && break; sleep 0.05; done
export FF_ROUTER_SOCKET=$work/ffrouter.sock UCX_TLS=ff,self
uct="-x ff -d router"
tests=(
    "am_lat_short_8B   -t am_lat $uct -D short -s 8 -n 1000000"
    "am_lat_bcopy_8KiB -t am_lat $uct -D bcopy -s 8192 -n 200000"
    "am_bw_bcopy_8B    -t am_bw $uct -D bcopy -s 8 -n 4000000"
    "am_bw_bcopy_64KiB -t am_bw $uct -D bcopy -s 65536 -n 100000"
    "put_bw_zcopy_1MiB -t put_bw $uct -D zcopy -s 1048576 -n 5000"
    "get_zcopy_1MiB    -t get $uct -D zcopy -s 1048576 -n 5000"
    "tag_lat_8B        -t tag_lat -s 8 -n 500000"
    "tag_lat_4KiB      -t tag_lat -s 4096 -n 200000"
    "tag_bw_8KiB       -t tag_bw -s 8192 -n 500000"
    "tag_bw_64KiB      -t tag_bw -s 65536 -n 100000"
    "tag_bw_1MiB       -t tag_bw -s 1048576 -n 10000"
)
port=$((20000 + RANDOM % 20000))
busy_jiffies() {  # the machine's busy time so far, in clock ticks
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
# run LIB ARGS...: prints "p50 MBps msgps cpu_s_per_gb" of the Final line.
run() {
    local lib=$1 j0 j1 size=0 iters=0 a
    shift
    a=("$@")
    for ((i = 0; i + 1 < ${#a[@]}; i++)); do
        case ${a[i]} in -s) size=${a[i + 1]} ;; -n|-w) iters=$((iters + a[i + 1])) ;; esac
    done
    port=$((port + 1))
    LD_PRELOAD=$lib timeout 120 ucx_perftest -p $port -c 0 >"$work/srv.log" 2>&1 </dev/null &
    spid=$!
    for _ in $(seq 200); do ss -ltnH "sport = :$port" | grep -q . && break; sleep 0.02; done
    j0=$(busy_jiffies)
    LD_PRELOAD=$lib timeout 120 ucx_perftest 127.0.0.1 -p $port -c 1 "$@" -f >"$work/cli.log" 2>&1 </dev/null || true
    j1=$(busy_jiffies)
    wait "$spid" 2>/dev/null || true
    spid=""
    awk -v a="$j0" -v b="$j1" -v hz="$(getconf CLK_TCK)" -v bytes="$((size * iters))" \
        'NF == 8 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9.]+$/ { last = $2 " " $6 " " $8 }
         END { if (last == "") exit 1; printf "%s %.4f\n", last, (b - a) / hz / (bytes / 1e9) }' "$work/cli.log"
}
echo "build,round,test,p50_us,MBps,msgps,cpu_s_per_gb" | tee "$out"
for ((r = 1; r <= rounds; r++)); do
    for t in "${tests[@]}"; do
        read -r name args <<<"$t"
        if [[ -n ${UCX_AB_ONLY:-} && " $UCX_AB_ONLY " != *" $name "* ]]; then
            continue
        fi
        # Alternate which build goes first from round to round.
        if ((r % 2)); then order="A B"; else order="B A"; fi
        for which in $order; do
            lib=$A; [[ $which = B ]] && lib=$B
            # shellcheck disable=SC2086
            if vals=$(run "$lib" $args -w 10000); then
                read -r p50 mbps rate cpu <<<"$vals"
                echo "$which,$r,$name,$p50,$mbps,$rate,$cpu" | tee -a "$out"
            else
                echo "$which $name failed:" >&2
                tail -3 "$work/cli.log" >&2
            fi
        done
    done
done
