# bench/verbs_common.sh - sourced by the verbs benchmarks (verbs_bench.sh,
# verbs_srq_bench.sh, verbs_ucx_bench.sh), after they set `top` and `bin`.
#
# verbs_setup NAME TOOL: checks that the release binaries (--bin DIR, or
# CARGO_TARGET_DIR/release) and TOOL (perftest's or UCX's) are there, and
# sets
#   tgt  the directory of the release binaries;
#   ffc  tools/ffcontainer;
#   vb   a scratch directory: vb/lib/libibverbs.so.1 is ffverbs (put
#        vb/lib first in LD_LIBRARY_PATH and Debian's binaries see ff0),
#        vb/rt/t holds a router's tenant socket.
verbs_setup() {
    tgt=${bin:-${CARGO_TARGET_DIR:-$top/target}/release}
    tgt=$(cd "$tgt" && pwd)
    for f in "$tgt/libffverbs.so" "$tgt/ffrouter"; do
        [[ -e $f ]] || { echo "$f missing: cargo build --release -p ffverbs -p ffrouter" >&2; exit 1; }
    done
    command -v "$2" >/dev/null || { echo "$2 missing: scripts/deps.sh" >&2; exit 1; }
    ffc=$top/tools/ffcontainer
    vb=$(mktemp -d "/tmp/$1.XXXXXX")
    mkdir -p "$vb/lib" "$vb/rt/t"
    ln -s "$tgt/libffverbs.so" "$vb/lib/libibverbs.so.1"
}

# verbs_one_host: starts one router with tenant t (socket vb/rt/t/ffrouter.sock,
# log vb/router.log), waits for its socket, and sets the EXIT trap that
# stops it and removes vb.
verbs_one_host() {
    "$tgt/ffrouter" --tenant "t=$vb/rt/t/ffrouter.sock" --log-level warn 2>"$vb/router.log" &
    router=$!
    cleanup() { kill "$router" 2>/dev/null || true; wait "$router" 2>/dev/null || true; rm -rf "$vb"; }
    trap cleanup EXIT
    for _ in $(seq 100); do [[ -S $vb/rt/t/ffrouter.sock ]] && break; sleep 0.1; done
}

# verbs_two_hosts: two emulated hosts and their routers (bench/twohosts.sh:
# sets ns0 ns1 work), the EXIT trap that takes them down, and the
# ffcontainer arguments for a server container on host 0 (srv_args) and a
# client container on host 1 (cli_args); names is the containers' prefix.
verbs_two_hosts() {
    . "$here/twohosts.sh"
    cleanup() { twohosts_down; rm -rf "$vb"; }
    trap cleanup EXIT
    twohosts_up "$tgt" 0
    srv_args=(--bridge ffbr --host-netns "$ns0" --socket-dir "$work/h0/bench")
    cli_args=(--bridge ffbr --host-netns "$ns1" --socket-dir "$work/h1/bench")
    names=$twohosts_prefix
}
