# testkit/docker_hosts.sh - FreeFlow's Docker deployment on this machine,
# for scripts that run something between training containers (sourced):
#
#   . testkit/docker_hosts.sh
#   dh_init PREFIX        # $dh_work, cleanup trap, fail()
#   dh_routers HOSTS      # router containers: 1, or 2 emulated hosts
#   dh_network NAME       # a Docker network on a free /24: $dh_subnet
#   dh_rank NAME HOST [extra flags...] -- CMD...   # a training container
#
# The router containers run with the image and flags of k8s/ffrouter.yaml
# (docker/flags.sh); host h's tenant "demo" has its socket directory in
# $dh_work/hH/tenants/demo on the "node" (a host volume). With two hosts the
# routers are linked over their own Docker network ($dh_id-routers) with a
# peer secret on a read-only volume. Training containers are nobody, no
# capabilities, private IPC, and mount only their host's tenant directory,
# read-only, at /run/freeflow. Everything is removed on exit.

# shellcheck source=../docker/flags.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker/flags.sh"
dh_id="" dh_work="" dh_subnet="" dh_hosts=1
dh_containers=() dh_networks=()

fail() { echo "FAIL: $*" >&2; exit 1; }

dh_cleanup() {
    [ ${#dh_containers[@]} -eq 0 ] || docker rm -f "${dh_containers[@]}" >/dev/null 2>&1 || true
    [ ${#dh_networks[@]} -eq 0 ] || docker network rm "${dh_networks[@]}" >/dev/null 2>&1 || true
    [ -z "$dh_work" ] || rm -rf "$dh_work"
}

dh_init() {
    dh_id=$1$$
    dh_work=$(mktemp -d /tmp/ffdocker.XXXXXX)
    chmod 755 "$dh_work"
    trap dh_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# dh_network NAME: creates $dh_id-NAME on a /24 no other network uses.
dh_network() {
    local try
    for try in 0 1 2 3 4 5 6 7; do
        dh_subnet="10.$((200 + ($$ + 3 * ${#dh_networks[@]} + try) % 50)).$((($$ + 7 * try) % 250)).0/24"
        if docker network create --subnet "$dh_subnet" "$dh_id-$1" >/dev/null 2>&1; then
            dh_networks+=("$dh_id-$1")
            return 0
        fi
    done
    fail "cannot create a Docker network $dh_id-$1"
}

# dh_routers HOSTS: starts the router containers $dh_id-router0 (and 1) and
# waits for their sockets.
dh_routers() {
    local h net link ip sock routers_sub=""
    # shellcheck disable=SC2206
    local router_flags=($FF_ROUTER_RUN_FLAGS)
    dh_hosts=$1
    if [ "$dh_hosts" = 2 ]; then
        head -c 32 /dev/urandom | base64 >"$dh_work/peer-secret"
        chmod 600 "$dh_work/peer-secret"
        dh_network routers
        routers_sub=$dh_subnet
    fi
    for h in $(seq 0 $((dh_hosts - 1))); do
        mkdir -p "$dh_work/h$h/tenants/demo"
        net=(--network none) link=()
        if [ "$dh_hosts" = 2 ]; then
            ip="${routers_sub%.0/24}.$((10 + h))"
            net=(--network "$dh_id-routers" --ip "$ip" -v "$dh_work/peer-secret:/etc/freeflow/peer-secret:ro")
            link=(--listen-addr "$ip:7470" --peer-secret-file /etc/freeflow/peer-secret)
        fi
        dh_containers+=("$dh_id-router$h")
        docker run -d --name "$dh_id-router$h" "${router_flags[@]}" "${net[@]}" \
            -v "$dh_work/h$h/tenants/demo:$FF_ROUTER_SOCKET_ROOT/demo" \
            "$FF_ROUTER_IMAGE" ffrouter --tenant "demo=$FF_ROUTER_SOCKET_ROOT/demo/ffrouter.sock" \
            "${link[@]}" --log-level warn >/dev/null
    done
    for h in $(seq 0 $((dh_hosts - 1))); do
        sock=$dh_work/h$h/tenants/demo/ffrouter.sock
        for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
        [ -S "$sock" ] || { docker logs "$dh_id-router$h" >&2 || true; fail "router container $dh_id-router$h made no socket"; }
    done
}

# dh_rank NAME HOST [extra flags...] -- CMD...: runs CMD in a training
# container of host HOST (in the foreground; add -d to detach).
dh_rank() {
    local name=$1 h=$2 extra=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
    shift
    # shellcheck disable=SC2206
    local rank_flags=($FF_RANK_RUN_FLAGS)
    dh_containers+=("$name")
    docker run --rm --name "$name" "${rank_flags[@]}" "${extra[@]}" \
        -v "$dh_work/h$h/tenants/demo:$FF_RANK_SOCKET_DIR:$FF_RANK_SOCKET_MOUNT_OPTS" \
        "$FF_RANK_IMAGE" "$@"
}
