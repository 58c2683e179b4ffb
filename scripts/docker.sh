#!/bin/bash
# scripts/docker.sh - Docker for FreeFlow's demo and tests: the daemon and
# the local images (no registry is needed; nothing is pulled).
#
# Usage:
#   scripts/docker.sh ensure          install docker.io if missing, start
#                                     dockerd if it does not answer; exit 77
#                                     (with a SKIP line) if Docker cannot run
#   scripts/docker.sh images [BINDIR] build what is missing or out of date:
#       freeflow/base:<hash>  Debian 12 root made by debootstrap with what
#                             ranks need (docker/base.packages: UCX, Open
#                             MPI, Python), imported with `docker import`;
#                             its tarball is cached in FF_IMAGE_CACHE
#                             (default /var/cache/freeflow), <hash> is that
#                             of its inputs
#       freeflow/ffrouter:0.1.0, freeflow/rank:0.1.0  (docker/*.Dockerfile,
#                             FROM the base) with the binaries of BINDIR
#                             (default $CARGO_TARGET_DIR/release or
#                             target/release); rebuilt only when a Dockerfile,
#                             a binary or the base changed (a label holds
#                             the hash of the inputs)
#   scripts/docker.sh stop            stop dockerd if `ensure` started it
#
# dockerd, when this script starts it (no systemd unit answering), runs with
# --iptables=false: FreeFlow's containers need no route out of the host
# (images are local; ranks reach the router through its Unix socket, routers
# each other on one Docker network), and Docker's own iptables set-up sets
# the FORWARD policy to DROP for every bridge on the host. Its log is
# /var/log/freeflow-dockerd.log.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../docker/flags.sh
. "$top/docker/flags.sh"
CACHE=${FF_IMAGE_CACHE:-/var/cache/freeflow}
STARTED=/run/freeflow-dockerd.pid
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

say() { echo "== $*" >&2; }
skip() { echo "SKIP: Docker: $*" >&2; exit 77; }

docker_up() { timeout 20 docker info >/dev/null 2>&1; }

cmd_ensure() {
    docker_up && return 0
    [ "$(id -u)" = 0 ] || skip "dockerd does not answer and only root can start it"
    if ! command -v dockerd >/dev/null 2>&1; then
        local t0=$SECONDS
        say "installing docker.io (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get install -y -q docker.io >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker.io >/dev/null 2>&1; }; } \
            || skip "apt-get install docker.io failed"
        say "docker.io installed in $((SECONDS - t0)) s"
        docker_up && return 0
    fi
    command -v docker >/dev/null 2>&1 || skip "no docker client"
    if [ -d /run/systemd/system ] && systemctl start docker >/dev/null 2>&1 && docker_up; then
        return 0
    fi
    say "starting dockerd --iptables=false (log /var/log/freeflow-dockerd.log)"
    dockerd --iptables=false --ip-masq=false >>/var/log/freeflow-dockerd.log 2>&1 &
    echo $! >"$STARTED"
    local i
    for i in $(seq 120); do
        docker_up && { say "dockerd up (pid $(cat "$STARTED"))"; return 0; }
        kill -0 "$(cat "$STARTED")" 2>/dev/null || break
        sleep 0.5
    done
    rm -f "$STARTED"
    tail -5 /var/log/freeflow-dockerd.log >&2 || true
    skip "dockerd did not start (see /var/log/freeflow-dockerd.log)"
}

cmd_stop() {
    [ -s "$STARTED" ] || return 0
    local pid
    pid=$(cat "$STARTED")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "dockerd (pid $pid) stopped"
    fi
    rm -f "$STARTED"
}

# ------------------------------------------------------------- the base --
mirror() {
    if [ -n "${FF_DEBIAN_MIRROR:-}" ]; then echo "$FF_DEBIAN_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^\s*#' | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

packages() { grep -v '^\s*#' "$top/docker/base.packages" | awk 'NF { print $1 }' | paste -sd, -; }

# Makes the base root in $1 (the tag is a hash of this function too).
build_root() {
    local root=$1
    debootstrap --variant=minbase --include="$(packages)" bookworm "$root" "$(mirror)"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
           "$root"/usr/share/locale/* "$root"/var/log/* "$root"/tmp/*
    mkdir -p "$root/run/freeflow"
}

base_tag() {
    local key
    key=$( { cat "$top/docker/base.packages"; declare -f build_root packages; } | sha256sum | cut -c1-12)
    echo "freeflow/base:$key"
}

# Prints the lines of a long step that start a new stage, with the time.
progress() {
    local t0=$SECONDS line stage last=
    while IFS= read -r line; do
        stage=${line#I: }
        stage=${stage%% *}
        [ "$stage" != Validating ] || continue
        if [ "$stage" != "$last" ]; then
            printf '   [%4d s] %s\n' $((SECONDS - t0)) "$line" >&2
            last=$stage
        fi
    done
}

build_base() {
    local tag=$1 key=${1#*:} tar t0=$SECONDS
    tar=$CACHE/base-$key.tar
    mkdir -p "$CACHE"
    exec 7>"$CACHE/base.lock"
    flock 7
    if docker image inspect "$tag" >/dev/null 2>&1; then flock -u 7; return 0; fi
    if [ ! -s "$tar" ]; then
        command -v debootstrap >/dev/null 2>&1 || {
            say "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null 2>&1; }
        }
        say "building $tag: debootstrap Debian 12 + $(packages | tr , ' ') (once; about 1-2 min on 2 cores)"
        local root
        root=$(mktemp -d "$CACHE/root.XXXXXX")
        # shellcheck disable=SC2064
        trap "rm -rf '$root' '$tar.tmp'" EXIT
        if ! build_root "$root" 2>&1 | progress; then
            say "debootstrap failed; its log: $root/debootstrap/debootstrap.log"
            tail -20 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
            exit 1
        fi
        [ -x "$root/usr/bin/ucx_info" ] && [ -x "$root/usr/bin/mpirun" ] && [ -x "$root/usr/bin/python3" ] \
            || { say "the base root lacks ucx_info, mpirun or python3"; exit 1; }
        tar -C "$root" --numeric-owner -cf "$tar.tmp" .
        mv "$tar.tmp" "$tar"
        rm -rf "$root"
        trap - EXIT
        say "base root: $(du -h "$tar" | cut -f1) in $tar ($((SECONDS - t0)) s)"
    fi
    local t1=$SECONDS
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "$tar" "$tag" >/dev/null
    flock -u 7
    say "imported $tag from $tar ($((SECONDS - t1)) s)"
}

# ----------------------------------------------------------- the images --
bindir_default() { echo "${CARGO_TARGET_DIR:-$top/target}/release"; }

# build_image TAG DOCKERFILE BASE FILES... (FILES: SRC[:NAME] put in the
# build context)
build_image() {
    local tag=$1 dockerfile=$2 base=$3 ctx f src name hash have t0=$SECONDS
    shift 3
    ctx=$(mktemp -d /tmp/ffimage.XXXXXX)
    for f in "$@"; do
        src=${f%%:*} name=${f#*:}
        [ "$name" != "$f" ] || name=$(basename "$src")
        [ -e "$src" ] || { rm -rf "$ctx"; say "$src missing (cargo build first)"; exit 1; }
        cp -a "$src" "$ctx/$name"
        find "$ctx/$name" -name __pycache__ -prune -exec rm -rf {} +
    done
    cp "$dockerfile" "$ctx/Dockerfile"
    hash=$( { docker image inspect -f '{{.Id}}' "$base"; cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
    have=$(docker image inspect -f '{{index .Config.Labels "org.freeflow.inputs"}}' "$tag" 2>/dev/null || true)
    if [ "$have" = "$hash" ]; then
        rm -rf "$ctx"
        say "$tag up to date"
        return 0
    fi
    say "building $tag ($(basename "$dockerfile"))"
    # (stderr only on failure: the legacy builder's deprecation notice)
    if ! docker build -q --label "org.freeflow.inputs=$hash" --build-arg "BASE=$base" -t "$tag" "$ctx" >"$ctx.log" 2>&1; then
        cat "$ctx.log" >&2; rm -rf "$ctx" "$ctx.log"; say "docker build of $tag failed"; exit 1
    fi
    rm -f "$ctx.log"
    rm -rf "$ctx"
    say "built $tag ($((SECONDS - t0)) s)"
}

cmd_images() {
    local bindir=${1:-$(bindir_default)} base t0=$SECONDS
    docker_up || { echo "dockerd does not answer (scripts/docker.sh ensure)" >&2; exit 1; }
    base=$(base_tag)
    if docker image inspect "$base" >/dev/null 2>&1; then
        say "$base up to date"
    else
        build_base "$base"
    fi
    build_image "$FF_ROUTER_IMAGE" "$top/docker/ffrouter.Dockerfile" "$base" "$bindir/ffrouter"
    build_image "$FF_RANK_IMAGE" "$top/docker/rank.Dockerfile" "$base" \
        "$bindir/ffbench" "$bindir/libuct_ff.so" "$bindir/libnccl_net_ff.so:libnccl-net-ff.so" \
        "$bindir/libffverbs.so:libibverbs.so.1" "$bindir/libffrdmacm.so:librdmacm.so.1" \
        "$top/python/freeflow" "$top/tools/ffrsh"
    say "images ready ($((SECONDS - t0)) s)"
}

[ $# -ge 1 ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
sub=$1
shift
case "$sub" in
    ensure) cmd_ensure ;;
    images) cmd_images "$@" ;;
    stop) cmd_stop ;;
    base) docker_up || exit 1; t=$(base_tag); docker image inspect "$t" >/dev/null 2>&1 || build_base "$t"; echo "$t" ;;
    *) echo "unknown command $sub (ensure, images, stop)" >&2; exit 2 ;;
esac
