#!/bin/bash
# examples/launch.sh - runs a 2-rank training script (Open MPI, pml ucx)
# across two containers, once per transport, the script unchanged:
#
#   examples/launch.sh [--hosts 1|2] [--transports "tcp ff"] [--rounds N]
#                      [--timeout S] [--bin DIR] [--no-wait] -- CMD [ARGS...]
#
# The hosts are bench/twohosts.sh's: network namespaces joined by a veth,
# a router on each (links sealed with a peer secret). --hosts 1 (default):
# both containers on host 0, behind its bridge; --hosts 2: one container on
# each host. The containers are tools/ffcontainer pods, each mounting only
# its host's tenant socket directory; mpirun runs in host 0's namespace and
# enters them through tools/ffrsh (as mpi-operator uses kubectl exec).
#   tcp: UCX_TLS=tcp,self, UCX_NET_DEVICES=eth0: UCX's TCP between the pods
#        (what containers get without FreeFlow);
#   ff:  UCX_TLS=ff,self, LD_PRELOAD=libuct_ff.so: through the router(s);
#   ff-clear: the same with the routers' links in clear
#        (--insecure-no-peer-secret, as UCX tcp is); only matters with
#        --hosts 2.
# A run fails unless UCX's lanes to the other rank are that transport's, and
# every mpirun runs under a timeout (default 600 s): a hang is an error.
# Each run waits (up to 30 s) for an idle machine and is run again (once)
# if other programs took more than a tenth of its CPU meanwhile;
# --no-wait (tests, which time nothing) does neither.
# CMD prints one line "RESULT label=T ... images_per_sec=X loss_first=A
# loss_last=B allreduce_mb=M allreduce_ms=Y" (FF_EXAMPLE_LABEL=T is set);
# the transports take turns, --rounds times (default 1), and the table
# gives the median of each column over the rounds. Needs root, Open MPI, UCX
# 1.13 and a release build (--bin, default $CARGO_TARGET_DIR/release or
# target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
hosts=1 transports="tcp ff" rounds=1 limit=600 bin="" wait=1
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift ;;
        --transports) transports=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --timeout) limit=$2; shift ;;
        --bin) bin=$2; shift ;;
        --no-wait) wait=0 ;;
        --) shift; break ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ $# -gt 0 ] || { echo "usage: $0 [options] -- CMD [ARGS...]" >&2; exit 2; }
case "$hosts" in 1|2) ;; *) echo "--hosts 1 or 2" >&2; exit 2 ;; esac
for t in $transports; do
    case "$t" in tcp|ff|ff-clear) ;; *) echo "unknown transport $t (tcp, ff, ff-clear)" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "$0 needs root (network namespaces)" >&2; exit 1; }
[ -n "$bin" ] || bin="${CARGO_TARGET_DIR:-$top/target}/release"
if [ ! -e "$bin/ffrouter" ] || [ ! -e "$bin/libuct_ff.so" ]; then
    echo "== building FreeFlow (cargo build --release)" >&2
    (cd "$top" && cargo build --release -p ffrouter -p ucx-transport)
fi
bin=$(cd "$bin" && pwd)
lib="$bin/libuct_ff.so"

. "$top/bench/twohosts.sh"
trap twohosts_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
clear=0
twohosts_up "$bin" $clear

mkdir -p "$work/rsh"
names=("${twohosts_prefix}-rank0" "${twohosts_prefix}-rank1")
for i in 0 1; do
    h=$([ "$hosts" = 2 ] && echo $i || echo 0)
    ns=$([ $h = 0 ] && echo "$ns0" || echo "$ns1")
    "$top/tools/ffcontainer" run --name "${names[$i]}" --ip "10.7$((h + 1)).0.$((11 + i))/24" --bridge ffbr \
        --host-netns "$ns" --socket-dir "$work/h$h/bench" --pidfile "$work/rsh/${names[$i]}.pid" -- sleep 86400 &
    twohosts_pods+=($!)
done
for n in "${names[@]}"; do
    for _ in $(seq 400); do [ -s "$work/rsh/$n.pid" ] && break; sleep 0.05; done
    [ -s "$work/rsh/$n.pid" ] || { echo "pod $n did not start" >&2; exit 1; }
done
printf '%s slots=1\n' "${names[@]}" > "$work/hosts"

val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; }
hz=$(getconf CLK_TCK)
busy() { awk -v hz="$hz" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }
routers() { cat "/proc/$r0/stat" "/proc/$r1/stat" | awk -v hz="$hz" '{ s += $14 + $15 } END { printf "%.2f\n", s / hz }'; }
# quiet: wait (up to 30 s) for a second in which the machine is idle
# (under a quarter of a core busy), so that a run starts on a quiet machine.
quiet() {
    local a b
    [ $wait = 1 ] || return 0
    for _ in $(seq 30); do
        a=$(busy); sleep 1; b=$(busy)
        awk -v a="$a" -v b="$b" 'BEGIN { exit !(b - a < 0.25) }' && return 0
    done
    echo "   (the machine stayed busy for 30 s: starting anyway)" >&2
}
# job T CMD...: one 2-rank run over transport T: its output in $out, its
# own CPU seconds (every process it started, and the routers) in $own and
# what other programs took meanwhile (the machine's busy CPU minus $own) in
# $foreign. Exits on failure, a timeout, or lanes other than T's.
job() {
    local t=$1 extra want rc=0 b0 r0cpu
    shift
    case "$t" in
        tcp) extra=(-x UCX_TLS=tcp,self -x UCX_NET_DEVICES=eth0); want="tcp/eth0" ;;
        ff|ff-clear) extra=(-x UCX_TLS=ff,self -x "LD_PRELOAD=$lib"); want="ff/router" ;;
    esac
    # The routers' links: sealed for ff, in clear for ff-clear.
    case "$t" in
        ff) [ $clear = 0 ] || { clear=0; twohosts_routers 0; } ;;
        ff-clear) [ $clear = 1 ] || { clear=1; twohosts_routers 1; } ;;
    esac
    quiet
    b0=$(busy) r0cpu=$(routers)
    out=$(cd "$work" && FFRSH_DIR="$work/rsh" /usr/bin/python3 "$top/bench/subreap.py" "$work/cpu" \
        timeout -k 10 "$limit" ip netns exec "$ns0" \
        mpirun --allow-run-as-root -np 2 --hostfile "$work/hosts" \
        --mca plm_rsh_agent "$top/tools/ffrsh" --mca oob_tcp_if_include 10.0.0.0/8 \
        --mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any --mca btl self --bind-to none \
        -x FF_EXAMPLE_LABEL="$t" -x UCX_LOG_LEVEL=info "${extra[@]}" "$@" 2>&1) || rc=$?
    if [ $rc != 0 ]; then
        echo "$out" | grep -v 'UCX  \(INFO\|DIAG\)' | tail -30 >&2
        [ $rc = 124 ] || [ $rc = 137 ] && echo "mpirun over $t did not finish in $limit s" >&2
        echo "mpirun over $t failed (exit $rc)" >&2
        exit 1
    fi
    own=$(awk -v j="$(cat "$work/cpu")" -v a="$r0cpu" -v b="$(routers)" 'BEGIN { printf "%.1f", j + b - a }')
    foreign=$(awk -v a="$b0" -v b="$(busy)" -v o="$own" 'BEGIN { f = b - a - o; printf "%.1f", f < 0 ? 0 : f }')
    # The lanes of the endpoints to the other rank (not self).
    lanes=$(echo "$out" | grep 'ep_cfg\[' | grep -v 'self/' | grep -o '[a-z_]*([a-z]*/[a-z0-9]*)' | sort -u | tr '\n' ' ')
    if [ -z "$lanes" ] || echo "$lanes" | tr ' ' '\n' | grep -v '^$' | grep -qv "($want)"; then
        echo "over $t: lanes to the other rank are '$lanes', want only $want" >&2
        exit 1
    fi
}

# The transports take turns, the order rotating every round. A run during
# which other programs took more than a tenth of the run's own CPU is run
# again (once; then kept, and counted).
results=() disturbed=0
for round in $(seq "$rounds"); do
    ts=($transports)
    for k in $(seq 0 $((${#ts[@]} - 1))); do
        t=${ts[$(((k + round - 1) % ${#ts[@]}))]}
        for try in 1 2; do
            echo "== round $round: $hosts host(s), over $t" >&2
            job "$t" "$@"
            [ $wait = 1 ] && ! awk -v f="$foreign" -v o="$own" 'BEGIN { exit !(f <= 0.1 * o) }' || break
            echo "   (other programs took $foreign s of CPU during the run, the run $own s$([ $try = 2 ] && echo ': kept' || echo ': again'))" >&2
            [ $try != 2 ] || disturbed=$((disturbed + 1))
        done
        line=$(echo "$out" | grep '^RESULT') || { echo "$out" | tail -20 >&2; echo "no RESULT line" >&2; exit 1; }
        echo "$line cpu_s=$own other_programs_cpu_s=$foreign lanes: $lanes"
        results+=("$line")
    done
done

# median T KEY: the median of KEY over transport T's RESULT lines.
median() {
    printf '%s\n' "${results[@]}" | grep " label=$1 " | sed -n "s/.* $2=\([^ ]*\).*/\1/p" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "| transport ($hosts host(s)) | images/s | loss first -> last | gradient allreduce |"
echo "|---|---:|---|---:|"
for t in $transports; do
    r=$(printf '%s\n' "${results[@]}" | grep " label=$t " | tail -1)
    echo "| $t | $(median "$t" images_per_sec) | $(echo "$r" | val loss_first) -> $(echo "$r" | val loss_last) |" \
        "$(median "$t" allreduce_ms) ms ($(echo "$r" | val allreduce_mb) MB) |"
done
[ "$rounds" = 1 ] || echo "(medians of $rounds rounds; the losses are the last round's)"
[ $disturbed = 0 ] || echo "($disturbed run(s) kept although other programs took more than a tenth of their CPU)"
