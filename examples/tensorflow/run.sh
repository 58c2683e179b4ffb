#!/bin/bash
# examples/tensorflow/run.sh [--steps N] [--transports "tcp ff"]
#
# Runs train.py (unchanged) as a 2-rank Horovod/Open MPI job across two
# containers (tools/ffcontainer pods entered by mpirun through tools/ffrsh,
# the way mpi-operator uses kubectl exec), once per transport:
#   tcp: UCX tcp,self between the pods over veth (what containers get today)
#   ff:  UCX ff,self through the FreeFlow router (LD_PRELOAD=libuct_ff.so)
# Prints images/s for each and checks that the loss went down.
# Needs root. Builds FreeFlow and runs setup.sh (TF + Horovod venv) if needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
steps=60
transports="tcp ff"
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift ;;
        --transports) transports=$2; shift ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
venv=${FF_TF_VENV:-/opt/fftf}
[ -x "$venv/bin/python" ] || "$here/setup.sh"
bin="$top/target/release"
lib="$bin/libuct_ff.so"
if [ ! -e "$bin/ffrouter" ] || [ ! -e "$lib" ]; then
    (cd "$top" && cargo build --release --workspace)
fi

work=$(mktemp -d /tmp/fftf.XXXXXX)
mkdir -p "$work/t/train" "$work/rsh"
sock="$work/t/train/ffrouter.sock"
"$bin/ffrouter" --tenant "train=$sock" --log-level warn &
router=$!
pods=()
cleanup() {
    for p in "${pods[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${pods[@]}" 2>/dev/null || true
    kill $router 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

tag=$$
hosts=(tfw${tag}a tfw${tag}b)
for i in 0 1; do
    "$top/tools/ffcontainer" run --name "${hosts[$i]}" --ip "10.76.0.$((11 + i))/24" --bridge fftfbr \
        --socket-dir "$work/t/train" --pidfile "$work/rsh/${hosts[$i]}.pid" -- sleep 3600 &
    pods+=($!)
done
for h in "${hosts[@]}"; do
    for _ in $(seq 200); do [ -s "$work/rsh/$h.pid" ] && break; sleep 0.05; done
done
printf '%s slots=1\n' "${hosts[@]}" > "$work/hosts"

results=()
for t in $transports; do
    case "$t" in
        tcp) extra=(-x UCX_TLS=tcp,self -x UCX_NET_DEVICES=eth0) ;;
        ff) extra=(-x UCX_TLS=ff,self -x "LD_PRELOAD=$lib") ;;
        *) echo "unknown transport $t" >&2; exit 2 ;;
    esac
    echo "== training over $t" >&2
    out=$(cd "$work" && FFRSH_DIR="$work/rsh" mpirun --allow-run-as-root -np 2 --hostfile "$work/hosts" \
        --mca plm_rsh_agent "$top/tools/ffrsh" \
        --mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any --mca btl self --bind-to none \
        --mca oob_tcp_if_include 10.76.0.0/24 \
        -x FF_EXAMPLE_LABEL="$t" -x UCX_LOG_LEVEL=info -x TF_CPP_MIN_LOG_LEVEL=2 "${extra[@]}" \
        "$venv/bin/python" "$here/train.py" --steps "$steps" 2>&1) || { echo "$out" | tail -30 >&2; exit 1; }
    lanes=$(echo "$out" | grep -o 'tag([a-z]*/[a-z0-9]*)' | sort -u | tr '\n' ' ')
    line=$(echo "$out" | grep '^RESULT')
    echo "$line lanes: $lanes"
    results+=("$line")
done
echo
echo "| transport | images/s | loss first -> last | gradient allreduce (ms) |"
echo "|---|---:|---|---:|"
for r in "${results[@]}"; do
    l=$(echo "$r" | sed 's/.*label=\([^ ]*\).*/\1/')
    ips=$(echo "$r" | sed 's/.*images_per_sec=\([^ ]*\).*/\1/')
    f=$(echo "$r" | sed 's/.*loss_first=\([^ ]*\).*/\1/')
    la=$(echo "$r" | sed 's/.*loss_last=\([^ ]*\).*/\1/')
    ar=$(echo "$r" | sed 's/.*allreduce_ms=\([^ ]*\).*/\1/')
    mb=$(echo "$r" | sed 's/.*allreduce_mb=\([^ ]*\).*/\1/')
    echo "| $l | $ips | $f -> $la | $ar ($mb MB) |"
done
