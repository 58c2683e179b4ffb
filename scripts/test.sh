#!/bin/bash
# scripts/test.sh - the second README command (and CI's): installs missing
# dependencies, builds, and runs every test. Needs root (namespaces).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces): $0" >&2; exit 1; }
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --all-targets
# Lints, warnings as errors (clippy's deny-by-default ones catch unsound
# code, e.g. a safe function that dereferences a raw pointer).
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets -- -D warnings
else
    echo "SKIPPED: clippy (not in this Rust toolchain; rustup component add clippy)"
fi
bindir=${CARGO_TARGET_DIR:-$top/target}/debug
# Docker (python/tests/test_docker.py): the daemon and the images, here so
# that their progress shows; the first run builds the base image (about a
# minute, cached in /var/cache/freeflow). A dockerd started here (not a
# running one, which is used as it is) is stopped at the end.
docker_rc=0
scripts/docker.sh ensure || docker_rc=$?
if [ $docker_rc -eq 0 ]; then
    trap 'scripts/docker.sh stop' EXIT
    scripts/docker.sh images "$bindir"
elif [ $docker_rc -ne 77 ]; then
    exit $docker_rc
fi
cargo test --workspace -- --test-threads 2
# The Python package and the Kubernetes manifests (python/tests): pytest,
# PyYAML and kubernetes-validate (it ships Kubernetes' schemas) in a venv.
venv=target/pyvenv
stamp="$venv/.installed-$(sha256sum python/pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e './python[test]'
    touch "$stamp"
fi
FF_BIN_DIR=$bindir FF_REQUIRE_K8S_SCHEMAS=1 "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider python/tests
# RDMA on a kernel verbs device: the routers' RDMA link over soft-RoCE in
# two QEMU guests (testkit/softroce.sh check, 2-3 minutes; the guest image
# is built once, about a minute, and cached in /var/cache/freeflow).
# Emulated rxe retransmits tens of times per run (though the guests'
# network stacks drop nothing; the check prints both counts) and can stall
# for seconds, so a failed check runs once more; the first failure stays in
# the log above, and the second is final.
export FF_SOFTROCE_CACHE=${FF_SOFTROCE_CACHE:-/var/cache/freeflow/softroce}
if ! testkit/softroce.sh check; then
    echo "test.sh: the soft-RoCE check FAILED (its log is above); running it a second and last time" >&2
    testkit/softroce.sh check
    echo "test.sh: the soft-RoCE check passed on its second try; the first failed" >&2
fi
