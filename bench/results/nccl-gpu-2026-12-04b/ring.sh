#!/bin/bash
# Is NCCL through two routers bound by the in-flight data per connection (ring)?
set -u
O=${OUT:-/tmp/out}; B=target/release
mkdir -p $B && cp .gpu/bin/* $B/ && mv $B/ffrouter $B/ffrouter.real
printf '#!/bin/bash\nexec "$(dirname "$0")/ffrouter.real" "$@" ${FF_EXTRA_ROUTER_FLAGS:-}\n' > $B/ffrouter; chmod +x $B/ffrouter
run() { local name=$1 flags=$2; shift 2
    FF_EXTRA_ROUTER_FLAGS="$flags" timeout 100 bash bench/nccl_gpu.sh --mps --routers 2 --min-bytes 4096 --max-bytes $((64 << 20)) --out $O/$name "$@" > $O/$name.txt 2>&1
    echo "== $name [$flags] rc=$? $(date -u +%T)"; sed -n '3,$p' $O/$name/README.md 2>/dev/null || tail -5 $O/$name.txt
    grep -h "peer ring\|ring" $O/$name/router0.log | head -2; rm -f $O/$name/*.log; }
# Lease 3 ran this list instead:
#   run s-def-1 ""; run s-r16-1 "--peer-ring-size 16777216"; run s-def-2 ""
#   run s-r16-2 "--peer-ring-size 16777216"; run s-r1-1 "--peer-ring-size 1048576"
#   run c-r16-1 "--peer-ring-size 16777216" --clear
# and lease 4 this one:
run s-r1-2 "--peer-ring-size 1048576"
run s-def-3 ""
run s-r1-3 "--peer-ring-size 1048576"
run s-def-4 ""
run s-r512k-1 "--peer-ring-size 524288"
run c-r1-1 "--peer-ring-size 1048576" --clear
run c-def-1 "" --clear
