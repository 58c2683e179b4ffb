#!/bin/bash
# bench/ucx_same_container.sh - two ranks in ONE container (tools/ffcontainer,
# the tenant's router socket mounted): UCX_TLS=ff,self (every message goes
# through the ff transport) vs ff,sm,self (UCX's shared memory too: sysv for
# eager messages, cma for rendezvous), ucx_perftest (UCP tag API), the two
# interleaved per test. Prints one line per run: p50 and average latency,
# bandwidth (10^6 B/s), message rate, CPU seconds per GB moved (bandwidth
# rows from 64 KiB: the whole machine, from /proc/stat, over the run, so
# run it on an otherwise idle machine), and the lanes UCX chose.
#
#   bench/ucx_same_container.sh [--bin DIR] [--rounds N]   (needs root)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$top/target}/release rounds=2
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d /tmp/ffsm.XXXXXX)
mkdir -p "$work/t/a"
"$bin/ffrouter" --tenant "a=$work/t/a/ffrouter.sock" --log-level warn &
router=$!
trap 'kill $router 2>/dev/null; "$top/tools/ffcontainer" cleanup ffsm$$ >/dev/null 2>&1; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/t/a/ffrouter.sock" ] && break; sleep 0.05; done
busy_jiffies() {  # the machine's busy time so far, in clock ticks
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
for round in $(seq "$rounds"); do
    for t in "tag_lat 8 100000" "tag_bw 8 1000000" "tag_bw 65536 50000" "tag_bw 1048576 5000" "tag_bw 4194304 1000"; do
        for tls in ff,self ff,sm,self; do
            read -r test size n <<<"$t"
            port=$((30000 + RANDOM % 20000))
            j0=$(busy_jiffies)
            out=$("$top/tools/ffcontainer" run --name "ffsm$$" --ip 10.77.0.231/24 --socket-dir "$work/t/a" -- \
                env UCX_TLS=$tls LD_PRELOAD="$bin/libuct_ff.so" UCX_LOG_LEVEL=info bash -c \
                "timeout 60 ucx_perftest -p $port >/dev/null 2>&1 & sleep 1; timeout 60 ucx_perftest 127.0.0.1 -p $port -t $test -s $size -n $n -w $((n / 10)) -f" 2>&1) || true
            j1=$(busy_jiffies)
            lanes=$(grep -o 'tag([^)]*)' <<<"$out" | sort -u | tr '\n' ' ')
            # The run includes the server's 1 s head start, idle.
            bytes=0
            [ "$test" = tag_bw ] && [ "$size" -ge 65536 ] && bytes=$((size * (n + n / 10)))
            v=$(awk -v a="$j0" -v b="$j1" -v hz="$(getconf CLK_TCK)" -v bytes="$bytes" \
                'NF == 8 && $1 ~ /^[0-9]+$/ { l = sprintf("p50 %s us  avg %s us  %.0f MB/s  %.3f Mmsg/s", $2, $4, $6 * 1.048576, $8 / 1e6) }
                 END { print (l == "" ? "FAILED" : bytes ? sprintf("%s  %.3f CPU s/GB", l, (b - a) / hz / (bytes / 1e9)) : l) }' <<<"$out")
            printf '%d %-11s %-7s %8s: %s  lanes %s\n' "$round" "$tls" "$test" "$size" "$v" "$lanes"
        done
    done
done
