# bench/gpu_lib.sh - sourced by the GPU scripts (bench/nccl_gpu.sh,
# examples/pytorch/ddp_gpu.sh): what they need, their routers' sockets, a
# private CUDA MPS daemon, and two ranks on one GPU that NCCL takes for two
# hosts.

# gpu_check PYTHON BIN: the release binaries in BIN, an NVIDIA GPU, and
# PYTHON's torch with CUDA.
gpu_check() {
    local f
    for f in ffrouter libnccl_net_ff.so; do
        [ -e "$2/$f" ] || { echo "missing $2/$f: cargo build --release -p nccl-net-plugin -p ffrouter" >&2; exit 1; }
    done
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this needs an NVIDIA GPU" >&2; exit 1; }
    "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        { echo "$1 cannot use CUDA through torch" >&2; exit 1; }
}

# wait_socket PATH: until a router's socket is there (5 s at most).
wait_socket() {
    local _
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "ffrouter did not start (no $1)" >&2
    exit 1
}

# mps_start DIR GPU: a private CUDA MPS daemon for GPU, its pipes and logs
# under DIR, so that the processes started after it share the GPU instead
# of time-slicing it.
mps_start() {
    mkdir -p "$1/mps" "$1/mps-log"
    export CUDA_MPS_PIPE_DIRECTORY="$1/mps" CUDA_MPS_LOG_DIRECTORY="$1/mps-log"
    CUDA_VISIBLE_DEVICES=$2 nvidia-cuda-mps-control -d
}

# mps_stop DIR: stops the daemon that mps_start DIR started.
mps_stop() {
    echo quit | CUDA_MPS_PIPE_DIRECTORY="$1/mps" nvidia-cuda-mps-control 2>/dev/null || true
}

# rank_env R GPU: sets the array renv to rank R's environment of a 2-rank
# job on GPU that NCCL takes for two hosts (distinct NCCL_HOSTIDs, P2P and
# shared memory off, so all traffic goes through its net transport), with
# NCCL's sockets on loopback unless NCCL_SOCKET_IFNAME says otherwise and
# INFO logs of INIT, NET and ENV.
rank_env() {
    renv=(CUDA_VISIBLE_DEVICES="$2" RANK="$1" WORLD_SIZE=2
        NCCL_HOSTID="freeflow-gpu-rank$1" NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1
        NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-lo}" NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,ENV)
}

# wait_ranks WHAT LOG0 LOG1 PID...: waits for the ranks; if any failed,
# prints the last lines of both logs and returns 1.
wait_ranks() {
    local what=$1 l0=$2 l1=$3 p rc=0
    shift 3
    for p in "$@"; do wait "$p" || rc=1; done
    if [ $rc != 0 ]; then
        echo "$what failed; last lines of the logs:" >&2
        tail -n 20 "$l0" "$l1" >&2
        return 1
    fi
}

# need_logs PATTERN LOG...: every LOG has PATTERN.
need_logs() {
    local pat=$1 f
    shift
    for f in "$@"; do
        grep -q -- "$pat" "$f" || { echo "no '$pat' in $f" >&2; return 1; }
    done
}
