#!/bin/bash
# scripts/demo.sh - FreeFlow in Docker: builds the images if needed
# (scripts/docker.sh: a Debian 12 base from debootstrap, once, then the
# router and rank images), starts the router container (k8s/ffrouter.yaml's
# image and flags) and two training containers (nobody, no capabilities,
# private IPC, only their tenant's socket directory), moves checksummed data
# between them, then benchmarks ff against UCX tcp between two training
# containers (bench/docker_bench.sh --quick: one round) and prints the
# results table. Where Docker cannot run (scripts/docker.sh ensure says
# why), the same with tools/ffcontainer namespaces and bench/run.sh.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bin=${CARGO_TARGET_DIR:-$top/target}/release
t0=$SECONDS
rc=0
scripts/docker.sh ensure || rc=$?
if [ $rc -eq 0 ]; then
    scripts/docker.sh images "$bin"
    testkit/docker_stream.sh --iters 32
    echo "== ($((SECONDS - t0)) s) quick benchmark between two training containers: ff vs UCX tcp over the Docker bridge"
    exec bench/docker_bench.sh --hosts 1 --rounds 1 --quick --out "$top/bench/results/demo"
fi
[ $rc -eq 77 ] || exit $rc
echo "== Docker cannot run here: the demo's containers are tools/ffcontainer namespaces"
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
exec bench/run.sh --quick --bin "$bin" --out "$top/bench/results/demo"
