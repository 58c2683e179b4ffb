# bench/twohosts.sh - two emulated hosts with a FreeFlow router each, for
# the benchmarks that run between hosts (sourced, not run):
#
#   . bench/twohosts.sh
#   twohosts_up BIN_DIR INSECURE(0|1)    # sets ns0 ns1 work r0 r1
#   trap twohosts_down EXIT              # or call it from your own trap
#   ... & twohosts_pods+=($!)            # background pods twohosts_down ends
#   twohosts_routers INSECURE(0|1)       # restart both routers, sealed or not
#   twohosts_router_flags=(--ring-size 1048576)  # extra flags for both routers
#   twohosts_cpus=(0 1)                  # pin host 0's router to CPU 0, host 1's to CPU 1 (- : not pinned)
#   twohosts_place "R0 R1 S C"           # the routers' CPUs and twohosts_pod_cpus=(S C), a
#                                        # container's on each host, from a --cpus list
#   twohosts_tenants=(other)             # more tenants (set before twohosts_up):
#                                        # socket $work/hI/NAME/ffrouter.sock
#   twohosts_pod HOST ID TENANT CMD...   # CMD in a fresh container on HOST
#
# Builds network namespaces ffmh0-$$ and ffmh1-$$ joined by a veth
# (10.88.0.1/24 - 10.88.0.2/24, interface "ffh" in each), each with a
# container bridge "ffbr" (host 0: 10.71.0.1/24, host 1: 10.72.0.1/24)
# routed over the veth, and a router on each (tenant "bench", socket
# $work/h0/bench/ffrouter.sock and $work/h1/bench/ffrouter.sock; listening
# on the veth address, port 7070; links sealed with a fresh peer secret, or
# in clear with INSECURE=1). Containers go on a host with twohosts_pod
# (or, where that does not serve, tools/ffcontainer run --bridge ffbr
# --host-netns "$ns0" --socket-dir "$work/h0/bench" --ip 10.71.0.X/24 ...),
# and their names should start with $twohosts_prefix, so that
# twohosts_down removes any that are left (with the routers, the
# namespaces and $work).

twohosts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
twohosts_prefix=ffm$$
ns0="" ns1="" work="" r0="" r1="" twohosts_bin=""
twohosts_pods=()
twohosts_router_flags=()
twohosts_cpus=()
twohosts_tenants=()

twohosts_up() {
    local i v ns
    twohosts_bin=$1
    ns0=ffmh0-$$ ns1=ffmh1-$$
    work=$(mktemp -d /tmp/ffmh.XXXXXX)
    ip netns add "$ns0"
    ip netns add "$ns1"
    ip link add "ffa$$" netns "$ns0" type veth peer name "ffb$$" netns "$ns1"
    i=0
    for ns in "$ns0" "$ns1"; do
        v=$([ $i = 0 ] && echo "ffa$$" || echo "ffb$$")
        ip -n "$ns" link set "$v" name ffh
        ip -n "$ns" addr add "10.88.0.$((i + 1))/24" dev ffh
        ip -n "$ns" link set ffh up
        ip -n "$ns" link set lo up
        ip -n "$ns" link add name ffbr type bridge
        ip -n "$ns" addr add "10.7$((i + 1)).0.1/24" dev ffbr
        ip -n "$ns" link set ffbr up
        ip -n "$ns" route add "10.7$((2 - i)).0.0/24" via "10.88.0.$((2 - i))"
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
        mkdir -p "$work/h$i/bench"
        for t in ${twohosts_tenants[@]+"${twohosts_tenants[@]}"}; do mkdir -p "$work/h$i/$t"; done
        i=$((i + 1))
    done
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/peer-secret"
    twohosts_routers "$2"
}

# twohosts_place "R0 R1 S C": host 0's router, host 1's router, and the
# containers a benchmark runs on host 0 and on host 1 go on those CPUs
# ("-": left to the scheduler). Sets twohosts_cpus and
# twohosts_pod_cpus=(S C), which the caller applies to its containers;
# exits 2 on a list that is not four CPUs of this machine.
twohosts_place() {
    local c x
    read -r -a c <<<"$1"
    [ ${#c[@]} = 4 ] || { echo "--cpus takes four CPUs: \"R0 R1 S C\"" >&2; exit 2; }
    for x in "${c[@]}"; do
        [ "$x" = - ] || [ "$x" -lt "$(nproc)" ] 2>/dev/null || { echo "--cpus: no CPU $x here" >&2; exit 2; }
    done
    twohosts_cpus=("${c[0]}" "${c[1]}")
    twohosts_pod_cpus=("${c[2]}" "${c[3]}")
}

# twohosts_routers INSECURE: (re)start the routers, links sealed with the
# peer secret (0) or in clear (1). Containers keep their socket directories;
# their clients must reconnect.
twohosts_routers() {
    local peer_flags s p t pin0=() pin1=() more0=() more1=()
    if [ ${#twohosts_cpus[@]} = 2 ]; then
        [ "${twohosts_cpus[0]}" = - ] || pin0=(taskset -c "${twohosts_cpus[0]}")
        [ "${twohosts_cpus[1]}" = - ] || pin1=(taskset -c "${twohosts_cpus[1]}")
    fi
    for p in "$r0" "$r1"; do
        [ -n "$p" ] || continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -f "$work/h0/bench/ffrouter.sock" "$work/h1/bench/ffrouter.sock"
    for t in ${twohosts_tenants[@]+"${twohosts_tenants[@]}"}; do
        rm -f "$work/h0/$t/ffrouter.sock" "$work/h1/$t/ffrouter.sock"
        more0+=(--tenant "$t=$work/h0/$t/ffrouter.sock") more1+=(--tenant "$t=$work/h1/$t/ffrouter.sock")
    done
    if [ "$1" = 1 ]; then
        peer_flags=(--insecure-no-peer-secret)
    else
        peer_flags=(--peer-secret-file "$work/peer-secret")
    fi
    ip netns exec "$ns0" ${pin0[@]+"${pin0[@]}"} "$twohosts_bin/ffrouter" --tenant "bench=$work/h0/bench/ffrouter.sock" ${more0[@]+"${more0[@]}"} \
        --listen-addr 10.88.0.1:7070 "${peer_flags[@]}" --log-level warn ${twohosts_router_flags[@]+"${twohosts_router_flags[@]}"} &
    r0=$!
    ip netns exec "$ns1" ${pin1[@]+"${pin1[@]}"} "$twohosts_bin/ffrouter" --tenant "bench=$work/h1/bench/ffrouter.sock" ${more1[@]+"${more1[@]}"} \
        --listen-addr 10.88.0.2:7070 "${peer_flags[@]}" --log-level warn ${twohosts_router_flags[@]+"${twohosts_router_flags[@]}"} &
    r1=$!
    for s in "$work/h0/bench/ffrouter.sock" "$work/h1/bench/ffrouter.sock" $(for t in ${twohosts_tenants[@]+"${twohosts_tenants[@]}"}; do echo "$work/h0/$t/ffrouter.sock $work/h1/$t/ffrouter.sock"; done); do
        for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.05; done
        [ -S "$s" ] || { echo "twohosts: router socket $s did not appear" >&2; return 1; }
    done
}

# twohosts_pod HOST ID TENANT CMD...: CMD in a fresh container on HOST
# (0 or 1) of TENANT ("bench", or one of twohosts_tenants), named
# $twohosts_prefix-ID, its address from ID (one container per ID at a time).
twohosts_pod() {
    local h=$1 id=$2 t=$3 ns; shift 3
    ns=$([ "$h" = 0 ] && echo "$ns0" || echo "$ns1")
    "$twohosts_dir/../tools/ffcontainer" run --name "$twohosts_prefix-$id" --ip "10.7$((h + 1)).0.$((100 + id % 150))/24" \
        --bridge ffbr --host-netns "$ns" --socket-dir "$work/h$h/$t" -- "$@"
}

twohosts_down() {
    local p
    for p in "${twohosts_pods[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${twohosts_pods[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$r0" ] && kill "$r0" 2>/dev/null || true
    [ -n "$r1" ] && kill "$r1" 2>/dev/null || true
    "$twohosts_dir/../tools/ffcontainer" cleanup "$twohosts_prefix" >/dev/null 2>&1 || true
    [ -n "$ns0" ] && ip netns del "$ns0" 2>/dev/null || true
    [ -n "$ns1" ] && ip netns del "$ns1" 2>/dev/null || true
    [ -n "$work" ] && rm -rf "$work"
    return 0
}
