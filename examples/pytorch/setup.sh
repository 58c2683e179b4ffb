#!/bin/bash
# examples/pytorch/setup.sh - what train_cpu.py needs, from Debian 12's own
# packages (no venv): PyTorch 1.13.1 built for CPU only, mpi4py 3.1.4 built
# against Debian's Open MPI, scikit-learn 1.2.1 (its digits data set).
# About 115 MB to download; 50 s on the 2-vCPU VM. PyPI's torch for
# x86_64 Linux would pull about 2.5 GB of CUDA libraries instead.
set -euo pipefail
pkgs=(python3-torch python3-mpi4py python3-sklearn)
if /usr/bin/python3 -c 'import torch, mpi4py, sklearn' 2>/dev/null; then
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "$0 installs Debian packages: run it as root" >&2; exit 1; }
echo "== installing ${pkgs[*]} (about 115 MB, a minute)" >&2
start=$(date +%s)
[ -n "$(find /var/lib/apt/lists -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ] || apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}"
/usr/bin/python3 -c 'import torch, mpi4py, sklearn; print("torch", torch.__version__, "mpi4py", mpi4py.__version__, "scikit-learn", sklearn.__version__)'
echo "== done in $(($(date +%s) - start)) s" >&2
