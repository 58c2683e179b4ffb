#!/bin/bash
# bench/nccl_gpu.sh - NCCL end to end over the FreeFlow net plugin, on ONE GPU.
#
#   bench/nccl_gpu.sh [--min-bytes N] [--max-bytes N] [--gpu I] [--mps]
#                     [--routers 1|2] [--clear] [--router-arg ARG]...
#                     [--out DIR]
#
# Two PyTorch ranks share GPU I (default 0) but get different NCCL_HOSTIDs,
# so NCCL believes they are on two hosts; with NCCL_P2P_DISABLE=1 and
# NCCL_SHM_DISABLE=1 as well, all their traffic goes through the net plugin.
# It runs the same all_reduce sweep (float32, --min-bytes..--max-bytes,
# default 1 KiB..256 MiB, powers of 4) twice:
#   * NCCL_NET=FreeFlow  through libnccl-net-ff.so and a private ffrouter
#                        (NCCL_NET_PLUGIN=ff, found via LD_LIBRARY_PATH);
#                        with --routers 2, each rank has a router of its
#                        own, and the two link over loopback TCP as two
#                        hosts' routers do (sealed with a shared secret;
#                        --clear: in clear, --insecure-no-peer-secret);
#                        --router-arg adds ARG to every router's command
#                        line, e.g. --router-arg --peer-ring-size
#                        --router-arg 1048576 (one word each);
#   * NCCL_NET=Socket    NCCL's built-in TCP transport, over loopback.
# Each result is checked (every rank reduces rank+1, so every element must
# be 3). The FreeFlow logs must show "Using network FreeFlow" and
# "via NET/FreeFlow", the Socket logs "Using network Socket"; otherwise the
# script fails. It prints bus bandwidth (algbw * 2(n-1)/n = algbw for two
# ranks) side by side, and writes OUT/nccl_gpu.csv (suite nccl-gpu,
# transports ff and socket, test all_reduce_busbw, GB/s), the NCCL logs
# OUT/{ff,socket}.rank{0,1}.log and the routers' OUT/router{0,1}.log
# (default OUT: bench/results/<date>/gpu).
#
# Without MPS the two processes time-slice the GPU, which puts a floor of a
# few ms under every collective for both transports alike; --mps starts a
# private CUDA MPS daemon for the run (needs nvidia-cuda-mps-control).
#
# Needs: an NVIDIA GPU, python3 with a CUDA build of torch (its bundled NCCL
# must be 2.20 or newer), and
#   cargo build --release -p nccl-net-plugin -p ffrouter
# Environment: PYTHON (default python3), NCCL_SOCKET_IFNAME (default lo),
# FF_GPU_TIMEOUT seconds per run (default 900).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
min_bytes=1024
max_bytes=$((256 << 20))
gpu=0
mps=0
routers=1
clear=0
out=""
router_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --min-bytes) min_bytes=$2; shift ;;
        --max-bytes) max_bytes=$2; shift ;;
        --gpu) gpu=$2; shift ;;
        --mps) mps=1 ;;
        --routers) routers=$2; shift ;;
        --clear) clear=1 ;;
        --router-arg) router_args+=("$2"); shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,40p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case $routers in 1 | 2) ;; *) echo "--routers takes 1 or 2" >&2; exit 2 ;; esac
[ "$clear" = 0 ] || [ "$routers" = 2 ] || { echo "--clear is about the link between two routers: add --routers 2" >&2; exit 2; }
py=${PYTHON:-python3}
bin="$top/target/release"
. "$here/gpu_lib.sh"
gpu_check "$py" "$bin"
[ -n "$out" ] || out="$top/bench/results/$(date +%Y-%m-%d)/gpu"
mkdir -p "$out"

work=$(mktemp -d /tmp/nccl_gpu.XXXXXX)
router_pids=()
cleanup() {
    [ ${#router_pids[@]} = 0 ] || kill "${router_pids[@]}" 2>/dev/null || true
    [ $mps = 0 ] || mps_stop "$work"
    rm -rf "$work"
}
trap cleanup EXIT

# The plugin under the name NCCL looks for (NCCL_NET_PLUGIN=ff ->
# libnccl-net-ff.so); LD_LIBRARY_PATH makes it findable on every NCCL >= 2.20.
cp "$bin/libnccl_net_ff.so" "$work/libnccl-net-ff.so"
# Router i serves rank i's socket socks[i] (with one router, both ranks
# share it); two routers link over loopback as two hosts' would.
socks=()
port=$((20000 + RANDOM % 20000))
link=()
if [ "$clear" = 1 ]; then
    link=(--insecure-no-peer-secret)
elif [ "$routers" = 2 ]; then
    head -c 32 /dev/urandom | base64 > "$work/secret"
    chmod 600 "$work/secret"
    link=(--peer-secret-file "$work/secret")
fi
for i in $(seq 0 $((routers - 1))); do
    mkdir -p "$work/tenant$i"
    socks+=("$work/tenant$i/ffrouter.sock")
    peer=()
    [ "$routers" = 2 ] && peer=(--listen-addr "127.0.0.1:$((port + i))" --peers "127.0.0.1:$((port + 1 - i))" "${link[@]}")
    "$bin/ffrouter" --tenant "gpu=${socks[$i]}" "${peer[@]}" ${router_args[@]+"${router_args[@]}"} --log-level info > "$out/router$i.log" 2>&1 &
    router_pids+=($!)
done
[ "$routers" = 2 ] || socks+=("${socks[0]}")
for sock in "${socks[@]}"; do
    wait_socket "$sock"
done

[ $mps = 0 ] || mps_start "$work" "$gpu"

cat > "$work/allreduce.py" <<'EOF'
import os, sys, time
import torch
import torch.distributed as dist

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
lo, hi = int(os.environ["MIN_BYTES"]), int(os.environ["MAX_BYTES"])
torch.cuda.set_device(0)  # CUDA_VISIBLE_DEVICES leaves one GPU: both ranks use it
dist.init_process_group("nccl", init_method="file://" + os.environ["INIT_FILE"], rank=rank, world_size=world)
if rank == 0:
    v = torch.cuda.nccl.version()
    v = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    print(f"TORCH {torch.__version__} NCCL {v}", flush=True)
expect = world * (world + 1) / 2
size = lo
while size <= hi:
    n = max(1, size // 4)
    check = torch.full((n,), float(rank + 1), device="cuda")
    dist.all_reduce(check)
    if not torch.all(check == expect):
        print(f"ERROR all_reduce of {size} bytes gave wrong values", flush=True)
        sys.exit(1)
    x = torch.zeros(n, device="cuda")
    for _ in range(3):
        dist.all_reduce(x)
    iters = max(5, min(100, (1 << 30) // size))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    algbw = n * 4 / dt / 1e9
    if rank == 0:
        print(f"RESULT size={n * 4} iters={iters} time_us={dt * 1e6:.1f} algbw={algbw:.3f} "
              f"busbw={algbw * 2 * (world - 1) / world:.3f}", flush=True)
    size *= 4
dist.destroy_process_group()
EOF

run() { # run NAME NCCL_NET
    local name=$1 net=$2 pids=() r
    rm -f "$work/init.$name"
    for r in 0 1; do
        rank_env $r "$gpu"
        env "${renv[@]}" INIT_FILE="$work/init.$name" MIN_BYTES="$min_bytes" MAX_BYTES="$max_bytes" \
            NCCL_NET="$net" NCCL_NET_PLUGIN=ff LD_LIBRARY_PATH="$work:${LD_LIBRARY_PATH:-}" \
            FF_ROUTER_SOCKET="${socks[$r]}" \
            timeout "${FF_GPU_TIMEOUT:-900}" "$py" "$work/allreduce.py" > "$out/$name.rank$r.log" 2>&1 &
        pids+=($!)
    done
    wait_ranks "NCCL_NET=$net run" "$out/$name.rank0.log" "$out/$name.rank1.log" "${pids[@]}"
}

need() { # need NAME PATTERN: every rank's log has PATTERN
    need_logs "$2" "$out/$1.rank0.log" "$out/$1.rank1.log"
}

echo "== NCCL_NET=FreeFlow (libnccl-net-ff.so via ffrouter)" >&2
run ff FreeFlow
need ff "Using network FreeFlow"
need ff "via NET/FreeFlow"
if [ "$routers" = 2 ]; then
    need_logs " is up (" "$out/router0.log" "$out/router1.log" || { echo "the two routers never linked" >&2; exit 1; }
fi
echo "== NCCL_NET=Socket" >&2
run socket Socket
need socket "Using network Socket"

csv="$out/nccl_gpu.csv"
echo "suite,transport,test,size_bytes,value,unit" > "$csv"
for name in ff socket; do
    sed -n 's/^RESULT size=\([0-9]*\) .* busbw=\([0-9.]*\).*/\1 \2/p' "$out/$name.rank0.log" |
        while read -r s b; do echo "nccl-gpu,$name,all_reduce_busbw,$s,$b,GB/s"; done >> "$csv"
done
{
    echo "# all_reduce bus bandwidth, 2 ranks on GPU $gpu ($(nvidia-smi -i "$gpu" --query-gpu=name --format=csv,noheader)), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "# $(sed -n 's/^TORCH /torch /p' "$out/ff.rank0.log" | head -1); $(grep -o 'Loaded net plugin FreeFlow ([^)]*)' "$out/ff.rank0.log" | head -1 || true); MPS $([ $mps = 1 ] && echo on || echo off);${router_args[@]+ router flags ${router_args[*]};} $([ "$routers" = 1 ] && echo "one router" || echo "two routers linked over loopback, $([ "$clear" = 1 ] && echo in clear || echo sealed)")"
    printf '%12s %14s %14s %8s\n' bytes "FreeFlow GB/s" "Socket GB/s" ratio
    join <(awk -F, '$2 == "ff" {print $4, $5}' "$csv" | sort -k1,1) <(awk -F, '$2 == "socket" {print $4, $5}' "$csv" | sort -k1,1) |
        sort -n | awk '{printf "%12d %14.3f %14.3f %7.2fx\n", $1, $2, $3, ($3 > 0 ? $2 / $3 : 0)}'
} | tee "$out/README.md"
echo "logs and $csv in $out" >&2
