#!/bin/bash
# testkit/docker_verbs.sh PROGRAM - the verbs and rdma_cm libraries as the
# rank image ships them (/usr/local/lib/freeflow/verbs: libibverbs.so.1 is
# ffverbs, librdmacm.so.1 ffrdmacm), used from a training container (nobody,
# no capabilities, private IPC, no network but loopback) through the router
# container: `freeflow doctor --verbs` finds and opens ff0 and makes an
# rdma_cm event channel, then PROGRAM (a verbs/rdma_cm program built on this
# host against Debian's headers: ffrdmacm/tests/c/ffcmcheck.c, mounted
# read-only) runs with LD_LIBRARY_PATH naming that directory.
#
# Needs the images (scripts/docker.sh images) and a running dockerd.
# Prints "== OK ..." and exits 0, or says what failed and exits 1.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=docker_hosts.sh
. "$top/testkit/docker_hosts.sh"
[ $# -eq 1 ] && [ -x "$1" ] || { echo "usage: $0 PROGRAM (an executable)" >&2; exit 2; }
prog=$(readlink -f "$1")
dh_init ffv
id=$dh_id
t0=$SECONDS
dh_routers 1
lib=/usr/local/lib/freeflow/verbs
out=$dh_work/doctor.out
rc=0
dh_rank "$id-doctor" 0 --network none -- python3 -m freeflow doctor --verbs --no-nccl --no-ucx \
    --plugin-dir /usr/local/lib/freeflow >"$out" 2>&1 || rc=$?
cat "$out"
[ $rc -eq 0 ] || fail "freeflow doctor --verbs in a training container (rc $rc)"
grep -q "ff0 listed and opened" "$out" || fail "the doctor did not open ff0"
grep -q "rdma_get_devices lists ff0, event channels work" "$out" || fail "the doctor did not find the rdma_cm library"
out=$dh_work/prog.out
rc=0
dh_rank "$id-prog" 0 --network none -e LD_LIBRARY_PATH=$lib -v "$prog:/usr/local/bin/ffprog:ro" -- /usr/local/bin/ffprog >"$out" 2>&1 || rc=$?
cat "$out"
[ $rc -eq 0 ] && grep -qx "OK done" "$out" || fail "$(basename "$prog") in a training container (rc $rc)"
echo "== OK: verbs and rdma_cm from the rank image in a training container, $((SECONDS - t0)) s"
