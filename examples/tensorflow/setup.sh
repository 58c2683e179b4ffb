#!/bin/bash
# examples/tensorflow/setup.sh - a Python venv with tensorflow-cpu 2.12.1 and
# Horovod 0.28.1 built against Debian's Open MPI (about 10 minutes on 2
# cores, most of it compiling Horovod). VENV defaults to /opt/fftf.
set -euo pipefail
venv=${FF_TF_VENV:-/opt/fftf}
if [ -x "$venv/bin/horovodrun" ] && "$venv/bin/python" -c 'import horovod.tensorflow' 2>/dev/null; then
    exit 0
fi
start=$(date +%s)
step() { echo "== [$(($(date +%s) - start)) s] $*" >&2; }
step "creating the venv $venv"
/usr/bin/python3 -m venv "$venv"
step "installing tensorflow-cpu 2.12.1 (about 500 MB to download)"
"$venv/bin/pip" install tensorflow-cpu==2.12.1
step "building Horovod 0.28.1 against Open MPI (about 8 minutes on 2 cores; pip prints nothing meanwhile)"
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_GLOO=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_PYTORCH=1 \
    "$venv/bin/pip" install -q --no-cache-dir horovod==0.28.1
step "done"
