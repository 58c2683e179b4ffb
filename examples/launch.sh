#!/bin/bash
# examples/launch.sh - runs a 2-rank training script (Open MPI, pml ucx)
# across two containers, once per transport, the script unchanged:
#
#   examples/launch.sh [--hosts 1|2] [--transports "tcp ff"] [--rounds N]
#                      [--timeout S] [--bin DIR] -- CMD [ARGS...]
#
# The hosts are bench/twohosts.sh's: network namespaces joined by a veth,
# a router on each (links sealed with a peer secret). --hosts 1 (default):
# both containers on host 0, behind its bridge; --hosts 2: one container on
# each host. The containers are tools/ffcontainer pods, each mounting only
# its host's tenant socket directory; mpirun runs in host 0's namespace and
# enters them through tools/ffrsh (as mpi-operator uses kubectl exec).
#   tcp: UCX_TLS=tcp,self, UCX_NET_DEVICES=eth0: UCX's TCP between the pods
#        (what containers get without FreeFlow);
#   ff:  UCX_TLS=ff,self, LD_PRELOAD=libuct_ff.so: through the router(s).
# A run fails unless UCX's lanes to the other rank are that transport's, and
# every mpirun runs under a timeout (default 600 s): a hang is an error.
# CMD prints one line "RESULT label=T ... images_per_sec=X loss_first=A
# loss_last=B allreduce_mb=M allreduce_ms=Y" (FF_EXAMPLE_LABEL=T is set);
# the transports take turns, --rounds times (default 1), and the table
# gives the median of each column over the rounds. Needs root, Open MPI, UCX
# 1.13 and a release build (--bin, default $CARGO_TARGET_DIR/release or
# target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
hosts=1 transports="tcp ff" rounds=1 limit=600 bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift ;;
        --transports) transports=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --timeout) limit=$2; shift ;;
        --bin) bin=$2; shift ;;
        --) shift; break ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ $# -gt 0 ] || { echo "usage: $0 [options] -- CMD [ARGS...]" >&2; exit 2; }
case "$hosts" in 1|2) ;; *) echo "--hosts 1 or 2" >&2; exit 2 ;; esac
for t in $transports; do
    case "$t" in tcp|ff) ;; *) echo "unknown transport $t (tcp, ff)" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "$0 needs root (network namespaces)" >&2; exit 1; }
[ -n "$bin" ] || bin="${CARGO_TARGET_DIR:-$top/target}/release"
if [ ! -e "$bin/ffrouter" ] || [ ! -e "$bin/libuct_ff.so" ]; then
    echo "== building FreeFlow (cargo build --release)" >&2
    (cd "$top" && cargo build --release -p ffrouter -p ucx-transport)
fi
bin=$(cd "$bin" && pwd)
lib="$bin/libuct_ff.so"

pods=()
. "$top/bench/twohosts.sh"
cleanup() {
    for p in "${pods[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pods[@]}"; do wait "$p" 2>/dev/null || true; done
    twohosts_down
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
twohosts_up "$bin" 0

mkdir -p "$work/rsh"
names=("${twohosts_prefix}-rank0" "${twohosts_prefix}-rank1")
for i in 0 1; do
    h=$([ "$hosts" = 2 ] && echo $i || echo 0)
    ns=$([ $h = 0 ] && echo "$ns0" || echo "$ns1")
    "$top/tools/ffcontainer" run --name "${names[$i]}" --ip "10.7$((h + 1)).0.$((11 + i))/24" --bridge ffbr \
        --host-netns "$ns" --socket-dir "$work/h$h/bench" --pidfile "$work/rsh/${names[$i]}.pid" -- sleep 86400 &
    pods+=($!)
done
for n in "${names[@]}"; do
    for _ in $(seq 400); do [ -s "$work/rsh/$n.pid" ] && break; sleep 0.05; done
    [ -s "$work/rsh/$n.pid" ] || { echo "pod $n did not start" >&2; exit 1; }
done
printf '%s slots=1\n' "${names[@]}" > "$work/hosts"

val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; }
results=()
for round in $(seq "$rounds"); do
    ts=($transports)
    for k in $(seq 0 $((${#ts[@]} - 1))); do
        t=${ts[$(((k + round - 1) % ${#ts[@]}))]}
        case "$t" in
            tcp) extra=(-x UCX_TLS=tcp,self -x UCX_NET_DEVICES=eth0); want="tcp/eth0" ;;
            ff) extra=(-x UCX_TLS=ff,self -x "LD_PRELOAD=$lib"); want="ff/router" ;;
        esac
        echo "== round $round: $hosts host(s), over $t" >&2
        rc=0
        out=$(cd "$work" && FFRSH_DIR="$work/rsh" timeout -k 10 "$limit" ip netns exec "$ns0" \
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
        # The lanes of the endpoints to the other rank (not self).
        lanes=$(echo "$out" | grep 'ep_cfg\[' | grep -v 'self/' | grep -o '[a-z_]*([a-z]*/[a-z0-9]*)' | sort -u | tr '\n' ' ')
        if [ -z "$lanes" ] || echo "$lanes" | tr ' ' '\n' | grep -v '^$' | grep -qv "($want)"; then
            echo "over $t: lanes to the other rank are '$lanes', want only $want" >&2
            exit 1
        fi
        line=$(echo "$out" | grep '^RESULT') || { echo "$out" | tail -20 >&2; echo "no RESULT line" >&2; exit 1; }
        echo "$line lanes: $lanes"
        results+=("$line")
    done
done

# median T KEY: the median of KEY over transport T's RESULT lines.
median() {
    printf '%s\n' "${results[@]}" | grep " label=$1 " | val "$2" | sort -g \
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
