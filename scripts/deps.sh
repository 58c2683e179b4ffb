#!/bin/bash
# scripts/deps.sh - installs what FreeFlow needs on Debian 12 (idempotent).
# Debian packages: UCX and Open MPI (baselines, UCX transport, MPI tests),
# rdma-core headers and build tools (the ibverbs crate; ffverbs generates its
# layouts from verbs.h, ffrdmacm from rdma_cma.h), ibverbs-utils,
# rdmacm-utils and perftest (ffverbs' and ffrdmacm's tests run them
# unmodified), iproute2/util-linux
# (namespaces), matplotlib (plots), and Debian's CPU-only PyTorch, mpi4py
# and scikit-learn for the PyTorch example and its test (about 115 MB, once;
# without their recommends). Rust via rustup if cargo is missing.
# `scripts/deps.sh softroce` also installs what testkit/softroce.sh needs to
# build and boot its QEMU guests (debootstrap, QEMU, Debian's kernel).
set -euo pipefail
pkgs="build-essential pkg-config cmake clang libclang-dev libnl-3-dev libnl-route-3-dev
      libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils rdmacm-utils perftest libucx-dev ucx-utils openmpi-bin libopenmpi-dev
      iproute2 util-linux procps python3 python3-matplotlib python3-pip python3-venv curl ca-certificates"
if [ "${1:-}" = softroce ]; then
    pkgs="$pkgs debootstrap qemu-system-x86 linux-image-amd64 initramfs-tools e2fsprogs kmod"
fi
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q $missing; }
fi
# The PyTorch example (examples/pytorch/setup.sh installs the same).
if ! dpkg -s python3-torch python3-mpi4py python3-sklearn >/dev/null 2>&1; then
    echo "installing: python3-torch python3-mpi4py python3-sklearn (about 115 MB)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-torch python3-mpi4py python3-sklearn >/dev/null 2>&1 ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-torch python3-mpi4py python3-sklearn; }
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy
    echo "cargo installed in $HOME/.cargo/bin; add it to PATH" >&2
fi
