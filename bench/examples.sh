#!/bin/bash
# bench/examples.sh [--rounds N] [--out DIR] - the PyTorch and TensorFlow
# examples (examples/*/run.sh), each on one host (tcp, ff) and across two
# emulated hosts (tcp, ff, ff-clear), N rounds each (default 2; the tables
# give medians). Writes the tables, the versions and the machine to
# DIR/README.md (default bench/results/examples-<date>) and each run's
# output to DIR/*.log. Needs root, a release build and both examples'
# set-ups (the TensorFlow one takes about 10 minutes the first time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=2 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,8p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$out" ] || out="$top/bench/results/examples-$(date +%Y-%m-%d)"
mkdir -p "$out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$top/examples/pytorch/setup.sh"
"$top/examples/tensorflow/setup.sh"
tables=""
for ex in pytorch tensorflow; do
    for hosts in 1 2; do
        ts=$([ $hosts = 1 ] && echo "tcp ff" || echo "tcp ff ff-clear")
        echo "== $ex, $hosts host(s): $ts, $rounds round(s)" >&2
        "$top/examples/$ex/run.sh" --hosts $hosts --rounds "$rounds" --transports "$ts" 2>&1 | tee "$out/$ex-hosts$hosts.log"
        tables="$tables
### $ex, $hosts host(s)

$(grep -v '^\(==\|RESULT\|\[\|   (\)' "$out/$ex-hosts$hosts.log" | sed '/^$/d')
"
    done
done
tfv=${FF_TF_VENV:-/opt/fftf}/bin/python
deb() { dpkg-query -W -f '${Version}' "$1"; }
ver() { "$1" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null || echo unknown; }
{
    echo "# The PyTorch and TensorFlow examples: tcp vs ff, one host and two emulated hosts, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"); load average before the runs: $load_before (a machine shared with other builds and benchmarks)"
    echo "- FreeFlow commit $(git -C "$top" rev-parse --short HEAD)$([ -z "$(git -C "$top" status --porcelain --untracked-files=no)" ] || echo ', with uncommitted changes'), UCX $(ucx_info -v | sed -n 's/^# Version //p'), $(mpirun --version | head -1)"
    echo "- Debian's python3-torch $(deb python3-torch) (CPU only), python3-mpi4py $(deb python3-mpi4py), python3-sklearn $(deb python3-sklearn); TensorFlow $(ver "$tfv" tensorflow-cpu), Horovod $(ver "$tfv" horovod) (pip, /opt/fftf)"
    echo "- command: bench/examples.sh --rounds $rounds; each run waited for an idle machine and was run again if other programs took more than a tenth of its CPU (examples/launch.sh)"
    echo "- 2 ranks, one thread each; one host: two pods behind one bridge, one router; two hosts: a pod on each, routers linked over a veth, sealed with a peer secret (ff) or in clear (ff-clear); tcp is UCX tcp,self between the pods, in clear"
    echo "- PyTorch: train_cpu.py, 100 steps of 32 images per rank (digits), 17.4 MB gradient; TensorFlow: train.py, 60 steps of 64 images per rank, 29.6 MB gradient; the gradient allreduce is one allreduce on its own (10 back to back after a barrier)"
    echo "$tables"
} > "$out/README.md"
cat "$out/README.md"
