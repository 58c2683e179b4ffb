#!/bin/bash
# testkit/docker_mpi.sh - Open MPI over FreeFlow between Docker containers,
# started the way mpi-operator starts a job: mpirun (here, on the host)
# enters two rank containers ("pods") through an rsh agent (tools/ffrsh,
# which uses `docker exec` for a running container of that name). The ranks
# run ucx-transport/tests/mpi/ffmpi.c (1 B .. 64 MiB exchanges, every byte
# checked, an Allreduce, a Barrier) with UCX over the router container.
#
# Usage: testkit/docker_mpi.sh [--tls UCX_TLS]   (default ff,sm,self)
#
# The rank containers are nobody, no capabilities, private IPC, only their
# tenant's socket directory (docker/flags.sh), on a Docker network of their
# own that carries only Open MPI's wire-up (mpirun's out-of-band TCP:
# --mca oob_tcp_if_include); the data must go through ff (checked from
# UCX's lanes). Needs the images (scripts/docker.sh images), mpicc and
# mpirun on the host (libopenmpi-dev, openmpi-bin: scripts/deps.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../docker/flags.sh
. "$top/docker/flags.sh"
tls=ff,sm,self
while [ $# -gt 0 ]; do
    case "$1" in
        --tls) tls=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck disable=SC2206
router_flags=($FF_ROUTER_RUN_FLAGS)
# shellcheck disable=SC2206
rank_flags=($FF_RANK_RUN_FLAGS)
id=ffm$$
work=$(mktemp -d /tmp/ffdmpi.XXXXXX)
chmod 755 "$work"
containers=("$id-router" "$id-r0" "$id-r1") networks=()
cleanup() {
    docker rm -f "${containers[@]}" >/dev/null 2>&1 || true
    [ ${#networks[@]} -eq 0 ] || docker network rm "${networks[@]}" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "FAIL: $*" >&2; exit 1; }
t0=$SECONDS

mkdir -p "$work/tenants/demo" "$work/bin"
mpicc -O2 -o "$work/bin/ffmpi" "$top/ucx-transport/tests/mpi/ffmpi.c"
docker run -d --name "$id-router" "${router_flags[@]}" --network none \
    -v "$work/tenants/demo:$FF_ROUTER_SOCKET_ROOT/demo" \
    "$FF_ROUTER_IMAGE" ffrouter --tenant "demo=$FF_ROUTER_SOCKET_ROOT/demo/ffrouter.sock" --log-level warn >/dev/null
for _ in $(seq 200); do [ -S "$work/tenants/demo/ffrouter.sock" ] && break; sleep 0.05; done
[ -S "$work/tenants/demo/ffrouter.sock" ] || fail "the router container made no socket"

for try in 0 1 2 3 4 5 6 7; do   # a /24 no other network uses
    sub="10.$((150 + ($$ + try) % 50)).$((($$ + 7 * try) % 250)).0/24"
    docker network create --subnet "$sub" "$id-net" >/dev/null 2>&1 && break
    [ $try -lt 7 ] || fail "cannot create a Docker network for the ranks"
done
networks+=("$id-net")
for r in r0 r1; do
    docker run -d --name "$id-$r" --hostname "$id-$r" "${rank_flags[@]}" --network "$id-net" \
        -v "$work/tenants/demo:$FF_RANK_SOCKET_DIR:$FF_RANK_SOCKET_MOUNT_OPTS" \
        -v "$work/bin:$work/bin:ro" "$FF_RANK_IMAGE" sleep infinity >/dev/null
done
printf '%s slots=1\n' "$id-r0" "$id-r1" >"$work/hosts"
echo "== router container and two rank containers up; mpirun enters them with tools/ffrsh (docker exec), UCX_TLS=$tls"
# plm_rsh_agent by name: every orted checks that it exists (the rank image
# has ffrsh in /usr/local/bin; here it comes from tools/).
out=$(cd "$work" && PATH="$top/tools:$PATH" timeout "${FF_MPI_TIMEOUT:-180}" mpirun --allow-run-as-root -np 2 --hostfile "$work/hosts" \
    --mca plm_rsh_agent ffrsh --mca plm_rsh_no_tree_spawn 1 \
    --mca oob_tcp_if_include "$sub" --mca btl self \
    --mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any --bind-to none \
    -x UCX_TLS="$tls" -x LD_PRELOAD=/usr/local/lib/freeflow/libuct_ff.so -x UCX_LOG_LEVEL=info \
    "$work/bin/ffmpi" 2>&1) || { echo "$out" | tail -30 >&2; fail "mpirun failed"; }
echo "$out" | grep '^FFMPI' || true
for r in 0 1; do
    grep -q "^FFMPI OK rank $r/2 host $id-r$r " <<<"$out" || { echo "$out" | tail -30 >&2; fail "rank $r did not report OK"; }
done
grep -q "max 67108864" <<<"$out" || fail "sizes did not reach 64 MiB"
lanes=$(grep 'ep_cfg\[' <<<"$out" | grep -v 'self/' || true)
[ -n "$lanes" ] && ! grep -qv 'tag(ff/router)' <<<"$lanes" || { echo "$lanes" >&2; fail "traffic between the ranks did not all go through ff"; }
echo "== lanes between the ranks: $(grep -o 'tag([a-z]*/[a-z0-9]*)' <<<"$lanes" | sort -u | tr '\n' ' ')"
echo "== OK: Open MPI over FreeFlow between Docker containers, $((SECONDS - t0)) s"
