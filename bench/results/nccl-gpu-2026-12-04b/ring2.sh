#!/bin/bash
# Ring size per connection between routers: ffbench streams and NCCL, on the Xeon.
set -u
O=${OUT:-/tmp/out}; B=target/release
mkdir -p $B && cp .gpu/bin/* $B/ && mv $B/ffrouter $B/ffrouter.real
printf '#!/bin/bash\nexec "$(dirname "$0")/ffrouter.real" "$@" ${FF_EXTRA_ROUTER_FLAGS:-}\n' > $B/ffrouter; chmod +x $B/ffrouter
linkbench() { # NAME RING
    local name=$1 ring=$2 w; w=$(mktemp -d); local port=$((30000 + RANDOM % 20000)) pids=() i h t
    head -c 32 /dev/urandom | base64 > $w/secret; chmod 600 $w/secret
    for i in 0 1; do
        mkdir -p $w/t$i
        $B/ffrouter.real --tenant "bench=$w/t$i/ffrouter.sock" --listen-addr 127.0.0.1:$((port + i)) \
            --peers 127.0.0.1:$((port + 1 - i)) --peer-secret-file $w/secret --peer-ring-size $ring > /dev/null 2>&1 &
        pids+=($!)
    done
    sleep 1.5
    for t in pingpong:4096 pingpong:65536 stream:65536 stream:524288 stream:1048576 stream:4194304; do
        local mode=${t%:*} s=${t#*:}
        local it=$(( s >= 1048576 ? 1500 : (s >= 65536 ? 5000 : 10000) ))
        FF_ROUTER_SOCKET=$w/t1/ffrouter.sock timeout 60 $B/ffbench serve $mode --size $s --iters $it > $w/srv 2>&1 &
        local sp=$!; h=""
        for _ in $(seq 200); do h=$(sed -n 's/^HANDLE //p' $w/srv | head -1); [ -n "$h" ] && break; sleep 0.05; done
        echo "link $name ring=$ring $mode $s: $(FF_ROUTER_SOCKET=$w/t0/ffrouter.sock timeout 60 $B/ffbench connect $mode --size $s --iters $it --handle "$h" 2>&1 | grep -E 'RESULT|rror' | grep -oE 'half_rtt_us_p50=[0-9.]+|mb_per_s=[0-9.]+|rror.*')"
        wait $sp
    done
    kill ${pids[@]}; sleep 0.3; rm -rf $w
}
linkbench a 4194304
linkbench b 1048576
linkbench c 4194304
linkbench d 1048576
run() { local name=$1 flags=$2; shift 2
    FF_EXTRA_ROUTER_FLAGS="$flags" timeout 100 bash bench/nccl_gpu.sh --mps --routers 2 --min-bytes 4096 --max-bytes $((64 << 20)) --out $O/$name "$@" > $O/$name.txt 2>&1
    echo "== $name [$flags] rc=$? $(date -u +%T)"; sed -n '3,$p' $O/$name/README.md 2>/dev/null || tail -5 $O/$name.txt
    rm -rf $O/$name; }
run s-r2-1 "--peer-ring-size 2097152"
run s-r1-4 "--peer-ring-size 1048576"
run s-r2-2 "--peer-ring-size 2097152"
