#!/bin/bash
# scripts/demo.sh - starts a router and two containers (own network, IPC,
# PID and mount namespaces; only their tenant's router socket shared), moves
# checksummed data between them, then runs the quick benchmark against UCX
# (posix,cma between host processes; tcp between containers over veth) and
# prints the results table.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bin=target/release
work=$(mktemp -d /tmp/ffdemo.XXXXXX)
mkdir -p "$work/tenants/demo"
sock="$work/tenants/demo/ffrouter.sock"
"$bin/ffrouter" --tenant "demo=$sock" --log-level warn &
router=$!
trap 'kill $router 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
echo "== router up (pid $router, tenant demo, socket $sock)"
out="$work/server.out"
tools/ffcontainer run --name demo-a --ip 10.77.0.201/24 --socket-dir "$work/tenants/demo" -- \
    "$bin/ffbench" serve check --iters 32 > "$out" &
spid=$!
for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$out" | head -1); [ -n "$h" ] && break; sleep 0.05; done
echo "== container demo-a listens; handle passed out of band to container demo-b"
tools/ffcontainer run --name demo-b --ip 10.77.0.202/24 --socket-dir "$work/tenants/demo" -- \
    "$bin/ffbench" connect check --iters 32 --handle "$h"
wait $spid
grep RESULT "$out"
echo "== router counters after both containers left:"
"$bin/ffrouter" stats --socket "$sock"
kill $router; trap 'rm -rf "$work"' EXIT
echo "== quick benchmark (ff vs UCX posix,cma,self vs UCX tcp over veth)"
exec bench/run.sh --quick --out "$top/bench/results/demo"
