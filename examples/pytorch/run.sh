#!/bin/bash
# examples/pytorch/run.sh [--hosts 1|2] [--rounds N] [--steps N] [--transports "tcp ff"]
#
# Runs train_cpu.py (unchanged) as a 2-rank PyTorch + mpi4py job over Open
# MPI + UCX across two containers, once over UCX tcp and once over FreeFlow
# (ff), on one host or (--hosts 2) across two emulated hosts
# (examples/launch.sh says how). Prints images/s, the loss at the start and
# the end (a run fails if it did not drop) and the time of one gradient
# allreduce for each. Needs root; installs the Debian packages of setup.sh
# and builds FreeFlow if needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
steps=100
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done
"$here/setup.sh"
exec "$here/../launch.sh" "${args[@]}" -- /usr/bin/python3 "$here/train_cpu.py" --steps "$steps"
