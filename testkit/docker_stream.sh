#!/bin/bash
# testkit/docker_stream.sh - FreeFlow between Docker containers: the router
# as a container (image and flags of k8s/ffrouter.yaml, docker/flags.sh),
# two training containers (nobody, no capabilities, private IPC, only their
# tenant's socket directory, read-only) exchanging a checksummed stream with
# ffbench (`check`: many sizes, both directions).
#
# Usage: testkit/docker_stream.sh [--hosts 1|2] [--iters N] [--max-size BYTES]
#   --hosts 1  one router container (no network at all: ranks reach it
#              through the socket directory on a host volume)
#   --hosts 2  two emulated hosts: two router containers linked over a
#              Docker network (a peer secret on a read-only volume), each
#              host's training container on that host's own Docker network
#              and socket directory; the stream crosses both routers
#
# Needs the images (scripts/docker.sh images) and a running dockerd. Checks,
# besides the stream: ranks run as uid 65534 with no effective capability,
# in distinct IPC namespaces, and see only ffrouter.sock in /run/freeflow;
# the router has no capability and cannot write its root file system.
# Prints "== OK ..." and exits 0, or says what failed and exits 1.
# Removes its containers, networks and directories on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=docker_hosts.sh
. "$top/testkit/docker_hosts.sh"
hosts=1 iters=32 max=4194304
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --max-size) max=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$hosts" = 1 ] || [ "$hosts" = 2 ] || { echo "--hosts 1 or 2" >&2; exit 2; }
dh_init ffd
id=$dh_id work=$dh_work
t0=$SECONDS
dh_routers "$hosts"
echo "== router container(s) up: $hosts ($FF_ROUTER_IMAGE: $FF_ROUTER_RUN_FLAGS)"

# The router's confinement.
caps=$(docker exec "$id-router0" awk '/^CapEff/ { print $2 }' /proc/1/status)
[ "$caps" = 0000000000000000 ] || fail "router has capabilities: CapEff $caps"
if docker exec "$id-router0" sh -c ': > /ffwrite-test' 2>/dev/null; then fail "router's root file system is writable"; fi

# Training containers: A serves on host 0, B connects from host hosts-1.
# Each emulated host's training containers are on that host's own network.
if [ "$hosts" = 2 ]; then
    dh_network host0
    dh_network host1
fi
rank() {  # rank NAME HOST CMD...
    local name=$1 h=$2 net=(--network none)
    shift 2
    [ "$hosts" = 1 ] || net=(--network "$id-host$h")
    dh_rank "$name" "$h" "${net[@]}" -- sh -c 'echo "ID $(id -u)"; echo "CAPS $(awk "/^CapEff/ { print \$2 }" /proc/self/status)";
            echo "IPC $(readlink /proc/self/ns/ipc)"; echo "SEES $(ls '"$FF_RANK_SOCKET_DIR"')"; exec "$@"' rank "$@"
}
dh_containers+=("$id-a" "$id-b")  # (rank runs in subshells too)
out=$work/a.out
rank "$id-a" 0 ffbench serve check --iters "$iters" --max-size "$max" >"$out" 2>&1 &
apid=$!
h=
for _ in $(seq 600); do
    h=$(sed -n 's/^HANDLE //p' "$out" | head -1)
    [ -n "$h" ] && break
    kill -0 $apid 2>/dev/null || break
    sleep 0.05
done
[ -n "$h" ] || { cat "$out" >&2; fail "training container A printed no handle"; }
echo "== training container A listens (host 0); its handle goes to B (host $((hosts - 1))) out of band"
bout=$work/b.out
rc=0
rank "$id-b" $((hosts - 1)) ffbench connect check --iters "$iters" --max-size "$max" --handle "$h" >"$bout" 2>&1 || rc=$?
arc=0
wait $apid || arc=$?
cat "$bout"
grep RESULT "$out" || true
[ $rc -eq 0 ] && [ $arc -eq 0 ] || { echo "--- A:" >&2; cat "$out" >&2; fail "ffbench check failed (A rc $arc, B rc $rc)"; }
for f in "$out" "$bout"; do
    grep -qx "ID 65534" "$f" || fail "a rank is not uid 65534: $(grep ^ID "$f")"
    grep -qx "CAPS 0000000000000000" "$f" || fail "a rank has capabilities: $(grep ^CAPS "$f")"
    grep -qx "SEES ffrouter.sock" "$f" || fail "a rank sees more than its socket: $(grep ^SEES "$f")"
done
[ "$(grep ^IPC "$out")" != "$(grep ^IPC "$bout")" ] || fail "the ranks share an IPC namespace"
echo "== router counters (host 0):"
docker exec "$id-router0" ffrouter stats --socket "$FF_ROUTER_SOCKET_ROOT/demo/ffrouter.sock"
echo "== OK: checksummed exchange between Docker containers, $hosts host(s), $((SECONDS - t0)) s"
