#!/bin/bash
# Device check for this session (not committed): NCCL through two routers
# after the reply windows, and the sealed link's ceiling on this CPU.
set -u
O=${OUT:-/tmp/out}; B=target/release
mkdir -p $B && cp .gpu/bin/* $B/
{ nvidia-smi --query-gpu=name,driver_version --format=csv; lscpu | grep -i "model name"; nproc; uname -r
  python3 -c 'import torch;print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())'; date -u; } > $O/env.txt 2>&1
cat $O/env.txt
linkbench() { # NAME ROUTER-FLAGS...
    local name=$1; shift
    local w topp=; w=$(mktemp -d); local port=$((30000 + RANDOM % 20000)) pids=() i s h
    head -c 32 /dev/urandom | base64 > $w/secret; chmod 600 $w/secret
    local link=(--peer-secret-file $w/secret); [ "$name" = clear ] && link=(--insecure-no-peer-secret)
    for i in 0 1; do
        mkdir -p $w/t$i
        $B/ffrouter --tenant "bench=$w/t$i/ffrouter.sock" --listen-addr 127.0.0.1:$((port + i)) \
            --peers 127.0.0.1:$((port + 1 - i)) "${link[@]}" --log-level info > $O/link-$name.router$i.log 2>&1 &
        pids+=($!)
    done
    sleep 2
    for t in pingpong:8 pingpong:4096 pingpong:65536 stream:65536 stream:1048576 stream:4194304; do
        local mode=${t%:*} s=${t#*:}
        local it=$(( s == 4194304 ? 2000 : s >= 1048576 ? 1000 : (s == 65536 ? 5000 : 10000) ))
        [ $t = stream:4194304 ] && { sleep 0.7; top -H -b -d 1 -n 2 -p ${pids[0]},${pids[1]} | awk '/^top -/{n++} n==2' | head -22 > $O/link-$name.top; } & [ $t = stream:4194304 ] && topp=$!
        FF_ROUTER_SOCKET=$w/t1/ffrouter.sock timeout 60 $B/ffbench serve $mode --size $s --iters $it > $w/srv 2>&1 &
        local sp=$!; h=""
        for _ in $(seq 200); do h=$(sed -n 's/^HANDLE //p' $w/srv | head -1); [ -n "$h" ] && break; sleep 0.05; done
        echo "link $name $mode $s: $(FF_ROUTER_SOCKET=$w/t0/ffrouter.sock timeout 60 $B/ffbench connect $mode --size $s --iters $it --handle "$h" 2>&1 | grep -E 'RESULT|rror')"
        wait $sp
    done
    wait $topp; echo "router threads during the 4 MiB stream:"; grep -v "^$" $O/link-$name.top | tail -12
    kill ${pids[@]}; sleep 0.3; rm -rf $w
}
linkbench sealed
linkbench clear
command -v nvidia-smi > /dev/null || exit 0
run() { local name=$1; shift
    timeout 120 bash bench/nccl_gpu.sh --mps --max-bytes $((64 << 20)) --out $O/$name "$@" > $O/$name.txt 2>&1
    echo "== $name rc=$? $(date -u +%T)"; cat $O/$name/README.md 2>/dev/null || tail -5 $O/$name.txt; }
run r2-sealed-1 --routers 2
run r2-clear-1 --routers 2 --clear
run r2-sealed-2 --routers 2
run r1-1
