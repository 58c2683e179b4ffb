#!/bin/bash
# examples/pytorch/ddp_gpu.sh [--gpu I] [--mps] [--out DIR]
#
# ddp_nccl.py, unchanged, as two DDP ranks on ONE GPU whose gradient
# allreduces all go through FreeFlow: each rank is started by
# `python -m freeflow run --no-ucx` (which sets NCCL_NET_PLUGIN and
# NCCL_NET=FreeFlow) and talks to a private ffrouter. The ranks get
# distinct NCCL_HOSTIDs and NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1, so NCCL
# takes them for two hosts and uses its net transport. Then the same
# training with NCCL_NET=Socket (NCCL's own TCP, over loopback).
#
# Fails unless `freeflow doctor` passes, every FreeFlow rank logs "via
# NET/FreeFlow", and both trainings finish with a loss that dropped
# (ddp_nccl.py checks that). Prints each run's RESULT line (samples/s, the
# loss at the start and the end); logs in OUT (default a temporary folder).
# --mps runs a private CUDA MPS daemon, so the two processes share the GPU
# instead of time-slicing it.
#
# Needs: an NVIDIA GPU, python3 with a CUDA build of torch (NCCL 2.20 or
# newer), and cargo build --release -p nccl-net-plugin -p ffrouter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
gpu=0
mps=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) gpu=$2; shift ;;
        --mps) mps=1 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,20p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
py=${PYTHON:-python3}
bin="$top/target/release"
. "$top/bench/gpu_lib.sh"
gpu_check "$py" "$bin"
work=$(mktemp -d /tmp/ddp_gpu.XXXXXX)
[ -n "$out" ] || out="$work/logs"
mkdir -p "$out"
router_pid=""
cleanup() {
    [ -n "$router_pid" ] && kill "$router_pid" 2>/dev/null || true
    [ $mps = 0 ] || mps_stop "$work"
    [ "$out" = "$work/logs" ] || rm -rf "$work"
}
trap cleanup EXIT

sock="$work/ffrouter.sock"
"$bin/ffrouter" --socket "$sock" --log-level warn &
router_pid=$!
wait_socket "$sock"
[ $mps = 0 ] || mps_start "$work" "$gpu"
export PYTHONPATH="$top/python${PYTHONPATH:+:$PYTHONPATH}"
ff=("$py" -m freeflow run --no-ucx --socket "$sock" --plugin-dir "$bin" --)
"$py" -m freeflow doctor --no-ucx --socket "$sock" --plugin-dir "$bin"

train() { # NAME, then the launcher words before the python command
    local name=$1 r pids=() port
    shift
    port=$((20000 + RANDOM % 20000))
    for r in 0 1; do
        rank_env $r "$gpu"
        env "${renv[@]}" LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            timeout "${FF_GPU_TIMEOUT:-600}" "$@" "$py" "$here/ddp_nccl.py" > "$out/$name.rank$r.log" 2>&1 &
        pids+=($!)
    done
    wait_ranks "$name: training" "$out/$name.rank0.log" "$out/$name.rank1.log" "${pids[@]}"
    echo "$name: $(grep '^RESULT' "$out/$name.rank0.log")"
}

train ff "${ff[@]}"
need_logs "via NET/FreeFlow" "$out/ff.rank0.log" "$out/ff.rank1.log"
train socket env NCCL_NET=Socket
need_logs "Using network Socket" "$out/socket.rank0.log"
echo "logs in $out"
