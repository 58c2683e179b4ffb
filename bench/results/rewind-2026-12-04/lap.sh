#!/bin/bash
# First lap of a ring: do fresh rings' pages cost? Two routers over loopback,
# sealed, ffbench ping-pong 4 KiB: iters 500 (2 MB each way: inside the first
# lap of a 4 MiB ring) vs 20000 (80 MB: mostly warm), ring 4 MiB and 1 MiB.
B=/work/main/target/release
w=$(mktemp -d); port=$((30000 + RANDOM % 20000))
head -c 32 /dev/urandom | base64 > $w/secret; chmod 600 $w/secret
start() { # RING
  pids=()
  for i in 0 1; do mkdir -p $w/t$i; rm -f $w/t$i/ffrouter.sock
    $B/ffrouter --tenant "bench=$w/t$i/ffrouter.sock" --listen-addr 127.0.0.1:$((port + i)) --peers 127.0.0.1:$((port + 1 - i)) --peer-secret-file $w/secret --peer-ring-size $1 > $w/r$i.log 2>&1 & pids+=($!); done
  sleep 1.5
}
one() { # SIZE ITERS
  FF_ROUTER_SOCKET=$w/t1/ffrouter.sock timeout 60 $B/ffbench serve pingpong --size $1 --iters $2 > $w/srv 2>&1 &
  local sp=$! h=""
  for _ in $(seq 200); do h=$(sed -n 's/^HANDLE //p' $w/srv | head -1); [ -n "$h" ] && break; sleep 0.05; done
  local f0=$(awk '{print $10}' /proc/${pids[0]}/stat) f1=$(awk '{print $10}' /proc/${pids[1]}/stat)
  local r=$(FF_ROUTER_SOCKET=$w/t0/ffrouter.sock timeout 60 $B/ffbench connect pingpong --size $1 --iters $2 --handle "$h" 2>&1 | grep -oE 'half_rtt_us_p50=[0-9.]+')
  wait $sp
  echo "size=$1 iters=$2 $r router_minflt=$(( $(awk '{print $10}' /proc/${pids[0]}/stat) - f0 + $(awk '{print $10}' /proc/${pids[1]}/stat) - f1 ))"
}
for ring in 4194304 1048576 4194304 1048576; do
  start $ring; echo "ring $ring"
  for it in 500 20000 500; do one 4096 $it; done
  kill ${pids[@]}; sleep 0.5
done
rm -rf $w
