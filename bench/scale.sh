#!/bin/bash
# bench/scale.sh - many connections per host on the routers (issue 17).
#
#   bench/scale.sh [--counts "1 16 64 256 512"] [--only across|local]
#                  [--size BYTES] [--secs S] [--idle S] [--probes K]
#                  [--cap SECONDS] [--drivers "0 8"] [--out DIR] [--bin DIR] [--label NAME]
#                  [--router-flags "FLAGS"] [--register]
#
# Two emulated hosts (bench/twohosts.sh: network namespaces, a router on
# each, sealed TCP link), both routers started under a 1024 open-file soft
# limit (they raise their own). For each N and each placement - "across"
# (server container on host 0, client container on host 1: every
# connection forwarded by both routers) and "local" (both containers on
# host 0: one router, control path only) - one `ffbench serve scale` and
# one `ffbench connect scale` with N connections between them:
#   * connect latency of the N connects, one after the other (p50, p99);
#   * all N stream --size messages at once, every message's header checked
#     by the receiver, driven on both sides (--drivers, a list: each N runs
#     once per entry) by one thread per connection with blocking sends and
#     receives (0, the default; placement "across"), or by K threads per
#     side that each progress their share of the connections with
#     nonblocking requests and sleep on all of them at once when none can
#     move (K > 0; placement "across/drivers=K"): aggregate MB/s and
#     Jain's fairness over --secs; meanwhile --probes more connects one at
#     a time (connect latency under load, p50/p99), and the host's shared
#     memory committed (Shmem in /proc/meminfo, less what it was before the
#     run: machine-wide, so other work on the machine shows);
#     with --drivers K > 0, also how many of the drivers' sleeps ended
#     woken and how many ran out their 100 ms nap (driver_naps_run_out_*:
#     a driver left asleep while its connections could move), and the
#     share of the machine's CPU time stolen by the hypervisor, waiting
#     for I/O, or idle meanwhile (host_steal_busy, host_iowait_busy,
#     host_idle_busy: near 0 when the streams are bound by the CPU);
#   * then all N sit idle, open (--idle s): the routers' threads, RSS,
#     RssShmem and descriptors after 1 s, both routers' CPU over the idle
#     time less 2 s (this includes giving idle rings' pages back, which
#     the routers do 2-3 s into the idle time), with --idle 10 or more also
#     over its part from 5 s on (after that: routers_idle_cpu_settled),
#     and then, --idle less 1 s into the idle time, the shared memory
#     committed.
# Each run is cut off after --cap seconds (a run that does not finish
# leaves its rows out and says so). Routers restart between runs. Rows
# "scale,PLACEMENT,METRIC,N,VALUE,UNIT" go to DIR/results.csv; the table
# and plot (bench/scale_report.py) to DIR/README.md and DIR/scale.png.
# DIR defaults to bench/results/scale-<label>-<date>. --router-flags adds
# FLAGS (split on spaces) to both routers' command lines, e.g.
# "--ring-size 1048576". The message buffers are plain heap memory, so
# every byte goes through the connections' rings (as NCCL's buffers and
# UCX applications' own memory do); --register registers them (shadow
# memory, as ffbench stream's: on one host a message of 32 KiB or more
# goes from the sender's buffer straight into the posted receive, one
# copy, and its send completes once the receiver copied it; across hosts
# the routers read and write the buffers directly). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
counts="1 16 64 256 512" only="" drivers=0 size=65536 secs=3 idle=8 probes=20 cap=150 out="" bin="" label=run router_flags="" register=--no-register
while [ $# -gt 0 ]; do
    case "$1" in
        --counts) counts=$2; shift ;;
        --only) only=$2; shift ;;
        --size) size=$2; shift ;;
        --secs) secs=$2; shift ;;
        --idle) idle=$2; shift ;;
        --probes) probes=$2; shift ;;
        --cap) cap=$2; shift ;;
        --drivers) drivers=$2; shift ;;
        --out) out=$2; shift ;;
        --bin) bin=$2; shift ;;
        --label) label=$2; shift ;;
        --router-flags) router_flags=$2; shift ;;
        --register) register="" ;;
        -h|--help) sed -n 2,51p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/scale.sh needs root (network namespaces)" >&2; exit 1; }
# The idle measurement sleeps --idle less 2 seconds (less 6 from 10 up).
[[ $idle =~ ^[0-9]+(\.[0-9]+)?$ ]] && [ "${idle%.*}" -ge 2 ] || { echo "--idle $idle: give 2 seconds or more" >&2; exit 2; }
[ -n "$out" ] || out="$top/bench/results/scale-$label-$(date +%Y-%m-%d)"
mkdir -p "$out"
[ -n "$bin" ] || bin="${CARGO_TARGET_DIR:-$top/target}/release"
for b in ffrouter ffbench; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b: run cargo build --release --workspace" >&2; exit 1; }
done
csv="$out/results.csv"
echo "suite,placement,metric,conns,value,unit" > "$csv"
log="$out/run.log"
: > "$log"

# The routers start where many services do: 1024 open files (soft).
ulimit -Sn 1024
. "$here/twohosts.sh"
read -r -a twohosts_router_flags <<< "$router_flags"
trap twohosts_down EXIT
twohosts_up "$bin" 0

seq_id=0
ctr() { # ctr HOST ID ARGS... : ffbench ARGS in a fresh container on HOST
    local h=$1 id=$2; shift 2
    twohosts_pod "$h" "$id" bench timeout -k 5 "$cap" "$bin/ffbench" "$@"
}
rpid() { pgrep -P "$1" ffrouter 2>/dev/null || echo "$1"; }  # ip netns exec may exec or fork
status() { sed -n "s/^$2:\s*\([0-9]*\).*/\1/p" "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
shmem_kb() { sed -n 's/^Shmem:\s*\([0-9]*\).*/\1/p' /proc/meminfo; }
val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }
row() { echo "scale,$1,$2,$3,$4,$5" >> "$csv"; }
# pct_between BEFORE AFTER FIELD: the share (%) of all CPU time between
# two /proc/stat "cpu" lines spent in FIELD (4 idle, 5 iowait, 8 steal).
pct_between() {
    local a b tot=0 i
    read -r -a a <<< "$1"; read -r -a b <<< "$2"
    for i in 1 2 3 4 5 6 7 8; do tot=$(( tot + b[i] - a[i] )); done
    [ "$tot" -gt 0 ] && awk -v d=$(( b[$3] - a[$3] )) -v t=$tot 'BEGIN{printf "%.2f", 100 * d / t}'
}
wait_line() { # wait_line FILE PATTERN SECONDS [PID]: gives up early once PID is gone
    local i
    for i in $(seq $(( $3 * 20 ))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then grep -q "$2" "$1" 2>/dev/null; return; fi
        sleep 0.05
    done
    return 1
}

run_one() { # run_one PLACEMENT N DRIVERS
    local where=$1 n=$2 k=$3 ch shm0 p0 p1 t0 tm t1 s0 sm s1 srv cli spid cpid h r st0 st1 p field
    ch=$([ "$where" = across ] && echo 1 || echo 0)
    [ "$k" = 0 ] || where="$where/drivers=$k"
    twohosts_routers 0
    p0=$(rpid "$r0"); p1=$(rpid "$r1")
    sleep 0.5
    shm0=$(shmem_kb)
    srv="$out/${where//[\/=]/-}-$n.server" cli="$out/${where//[\/=]/-}-$n.client"
    seq_id=$((seq_id + 2))
    ctr 0 "$seq_id" serve scale --conns "$n" --drivers "$k" --size "$size" --secs "$secs" $register > "$srv" 2>&1 &
    spid=$!
    wait_line "$srv" '^HANDLE ' 20 "$spid" || { echo "scale: $where N=$n: the server did not start" | tee -a "$log" >&2; kill $spid 2>/dev/null; wait $spid 2>/dev/null; return 0; }
    h=$(sed -n 's/^HANDLE //p' "$srv" | head -1)
    ctr "$ch" "$((seq_id + 1))" connect scale --conns "$n" --drivers "$k" --size "$size" --idle-secs "$idle" --probes "$probes" $register --handle "$h" > "$cli" 2>&1 &
    cpid=$!
    st0=""
    wait_line "$cli" '^STREAMING' "$cap" "$cpid" && st0=$(head -1 /proc/stat)
    if wait_line "$cli" '^PROBED' "$cap" "$cpid"; then
        row "$where" shmem_committed_busy "$n" "$(( $(shmem_kb) - shm0 ))" KiB
        if [ -n "$st0" ]; then
            # The machine's time stolen by the hypervisor, waiting for
            # I/O and idle while all N streamed (% of all CPU time): a run
            # that crawls while others' work starves the VM says so, and
            # an idle share near 0 says the streams had the whole CPU.
            st1=$(head -1 /proc/stat)
            for field in steal:8 iowait:5 idle:4; do
                p=$(pct_between "$st0" "$st1" "${field#*:}") && row "$where" "host_${field%%:*}_busy" "$n" "$p" %
            done
        fi
    fi
    if wait_line "$cli" '^IDLE' "$cap" "$cpid"; then
        sleep 1
        row "$where" threads_router0 "$n" "$(status "$p0" Threads)" threads
        row "$where" threads_router1 "$n" "$(status "$p1" Threads)" threads
        row "$where" rss_router0 "$n" "$(status "$p0" VmRSS)" KiB
        row "$where" rss_router1 "$n" "$(status "$p1" VmRSS)" KiB
        row "$where" rssshmem_router0 "$n" "$(status "$p0" RssShmem)" KiB
        row "$where" rssshmem_router1 "$n" "$(status "$p1" RssShmem)" KiB
        row "$where" fds_router0 "$n" "$(ls /proc/$p0/fd | wc -l)" fds
        row "$where" fds_router1 "$n" "$(ls /proc/$p1/fd | wc -l)" fds
        t0=$(( $(ticks "$p0") + $(ticks "$p1") )); s0=$(date +%s.%N)
        if [ "${idle%.*}" -ge 10 ]; then
            sleep 4
            tm=$(( $(ticks "$p0") + $(ticks "$p1") )); sm=$(date +%s.%N)
            sleep $(( ${idle%.*} - 6 ))
        else
            sleep $(( ${idle%.*} - 2 ))
        fi
        t1=$(( $(ticks "$p0") + $(ticks "$p1") )); s1=$(date +%s.%N)
        if [ "${idle%.*}" -ge 10 ]; then
            row "$where" routers_idle_cpu_settled "$n" "$(awk -v a="$tm" -v b="$t1" -v s="$sm" -v e="$s1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.3f", 100 * (b - a) / hz / (e - s)}')" %core
        fi
        row "$where" routers_idle_cpu "$n" "$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.3f", 100 * (b - a) / hz / (e - s)}')" %core
        row "$where" shmem_committed "$n" "$(( $(shmem_kb) - shm0 ))" KiB
    else
        echo "scale: $where N=$n: did not reach the idle phase within ${cap}s: $(tail -2 "$cli" | tr '\n' ' ')" | tee -a "$log" >&2
    fi
    wait $spid 2>/dev/null || true
    wait $cpid 2>/dev/null || true
    if r=$(grep '^RESULT' "$srv"); then
        row "$where" agg_mb_per_s "$n" "$(echo "$r" | val agg_mb_per_s)" MB/s
        row "$where" jain "$n" "$(echo "$r" | val jain)" ratio
        row "$where" bad_messages "$n" "$(echo "$r" | val bad_messages)" count
    else
        echo "scale: $where N=$n: no streaming result: $(grep -h -i 'error' "$srv" "$cli" | head -3 | tr '\n' ' ')" | tee -a "$log" >&2
    fi
    # Driver sleeps that ran out their 100 ms nap while streaming (--drivers
    # K > 0): many mean a driver was not woken when it could move.
    for r in server:"$srv" client:"$cli"; do
        if [ "$k" != 0 ] && r2=$(grep '^SLEEPS' "${r#*:}" | head -1); then
            row "$where" "driver_naps_run_out_${r%%:*}" "$n" "$(echo "$r2" | val naps_run_out)" count
            row "$where" "driver_sleeps_woken_${r%%:*}" "$n" "$(echo "$r2" | val woken)" count
        fi
    done
    if r=$(grep '^CONNECTED' "$cli"); then
        row "$where" connect_ms_p50 "$n" "$(echo "$r" | val connect_ms_p50)" ms
        row "$where" connect_ms_p99 "$n" "$(echo "$r" | val connect_ms_p99)" ms
        row "$where" connect_all_s "$n" "$(echo "$r" | val all_s)" s
    fi
    if r=$(grep '^PROBED' "$cli"); then
        row "$where" busy_connect_ms_p50 "$n" "$(echo "$r" | val busy_connect_ms_p50)" ms
        row "$where" busy_connect_ms_p99 "$n" "$(echo "$r" | val busy_connect_ms_p99)" ms
    fi
    grep -h -i "error" "$srv" "$cli" | head -5 >> "$log" || true
    "$top/tools/ffcontainer" cleanup "$twohosts_prefix" >/dev/null 2>&1 || true
}

for where in across local; do
    [ -z "$only" ] || [ "$only" = "$where" ] || continue
    for n in $counts; do
        for k in $drivers; do
            echo "== $where N=$n drivers=$k" >&2
            run_one "$where" "$n" "$k"
        done
    done
done

{
    echo "# Scale: N connections, $label, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- ffrouter commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown); two emulated hosts (network namespaces, a router each, sealed TCP link), routers started with a 1024 open-file soft limit"
    echo "- clients: $(for k in $drivers; do [ "$k" = 0 ] && printf '%s' 'one thread per connection (placements across, local); ' || printf '%s' "$k driver threads per side, nonblocking requests, one futex_waitv sleep on all their connections (placements */drivers=$k); "; done)"
    echo "- command: bench/scale.sh --counts \"$counts\" --drivers \"$drivers\" --size $size --secs $secs --idle $idle --probes $probes --cap $cap${only:+ --only $only}${router_flags:+ --router-flags \"$router_flags\"}$([ -z "$register" ] && echo " --register")"
    echo
    /usr/bin/python3 "$here/scale_report.py" "$out/scale.png" "$label=$csv"
    if [ -s "$log" ]; then echo; echo "## What went wrong"; echo; sed 's/^/    /' "$log"; fi
} > "$out/README.md"
cat "$out/README.md"
