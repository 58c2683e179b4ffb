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
