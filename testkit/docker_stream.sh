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
# shellcheck source=../docker/flags.sh
. "$top/docker/flags.sh"
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
# shellcheck disable=SC2206
router_flags=($FF_ROUTER_RUN_FLAGS)
# shellcheck disable=SC2206
rank_flags=($FF_RANK_RUN_FLAGS)
id=ffd$$
work=$(mktemp -d /tmp/ffdocker.XXXXXX)
containers=() networks=()
cleanup() {
    [ ${#containers[@]} -eq 0 ] || docker rm -f "${containers[@]}" >/dev/null 2>&1 || true
    [ ${#networks[@]} -eq 0 ] || docker network rm "${networks[@]}" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "FAIL: $*" >&2; exit 1; }
t0=$SECONDS

# Routers: one per emulated host; host h's tenant "demo" lives in
# $work/hN/tenants/demo on the "node" (the host volume).
if [ "$hosts" = 2 ]; then
    head -c 32 /dev/urandom | base64 >"$work/peer-secret"
    chmod 600 "$work/peer-secret"
    for try in 0 1 2 3 4 5 6 7; do   # a /24 no other network uses
        sub="10.$((200 + ($$ + try) % 50)).$((($$ + 7 * try) % 250)).0/24"
        docker network create --subnet "$sub" "$id-routers" >/dev/null 2>&1 && break
        [ $try -lt 7 ] || fail "cannot create a Docker network for the routers"
    done
    networks+=("$id-routers")
fi
for h in $(seq 0 $((hosts - 1))); do
    mkdir -p "$work/h$h/tenants/demo"
    net=(--network none) link=()
    if [ "$hosts" = 2 ]; then
        ip="${sub%.0/24}.$((10 + h))"
        net=(--network "$id-routers" --ip "$ip")
        link=(--listen-addr "$ip:7470" --peer-secret-file /etc/freeflow/peer-secret)
        net+=(-v "$work/peer-secret:/etc/freeflow/peer-secret:ro")
    fi
    docker run -d --name "$id-router$h" "${router_flags[@]}" "${net[@]}" \
        -v "$work/h$h/tenants/demo:$FF_ROUTER_SOCKET_ROOT/demo" \
        "$FF_ROUTER_IMAGE" ffrouter --tenant "demo=$FF_ROUTER_SOCKET_ROOT/demo/ffrouter.sock" \
        "${link[@]}" --log-level warn >/dev/null
    containers+=("$id-router$h")
done
for h in $(seq 0 $((hosts - 1))); do
    sock=$work/h$h/tenants/demo/ffrouter.sock
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || { docker logs "$id-router$h" >&2 || true; fail "router container $id-router$h made no socket"; }
done
echo "== router container(s) up: $hosts ($FF_ROUTER_IMAGE: $FF_ROUTER_RUN_FLAGS)"

# The router's confinement.
caps=$(docker exec "$id-router0" awk '/^CapEff/ { print $2 }' /proc/1/status)
[ "$caps" = 0000000000000000 ] || fail "router has capabilities: CapEff $caps"
if docker exec "$id-router0" sh -c ': > /ffwrite-test' 2>/dev/null; then fail "router's root file system is writable"; fi

# Training containers: A serves on host 0, B connects from host hosts-1.
# Each emulated host's training containers are on that host's own network.
if [ "$hosts" = 2 ]; then
    for h in 0 1; do
        docker network create "$id-host$h" >/dev/null
        networks+=("$id-host$h")
    done
fi
containers+=("$id-a" "$id-b")
rank() {  # rank NAME HOST CMD...
    local name=$1 h=$2 net=(--network none)
    shift 2
    [ "$hosts" = 1 ] || net=(--network "$id-host$h")
    docker run --rm --name "$name" "${rank_flags[@]}" "${net[@]}" \
        -v "$work/h$h/tenants/demo:$FF_RANK_SOCKET_DIR:$FF_RANK_SOCKET_MOUNT_OPTS" \
        "$FF_RANK_IMAGE" sh -c 'echo "ID $(id -u)"; echo "CAPS $(awk "/^CapEff/ { print \$2 }" /proc/self/status)";
            echo "IPC $(readlink /proc/self/ns/ipc)"; echo "SEES $(ls '"$FF_RANK_SOCKET_DIR"')"; exec "$@"' rank "$@"
}
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
