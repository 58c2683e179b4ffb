#!/bin/bash
# scripts/install-nccl-plugin.sh [PREFIX] - builds the NCCL net plugin and
# installs it as PREFIX/lib/freeflow/libnccl-net-ff.so (default PREFIX
# /usr/local; where `python -m freeflow env` and k8s/ look for it), plus a
# symlink PREFIX/lib/libnccl-net-ff.so so that NCCL_NET_PLUGIN=ff finds it
# through the loader's search path. Select it with NCCL_NET=FreeFlow and
# point FF_ROUTER_SOCKET at the tenant's router socket.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-${PREFIX:-/usr/local}}
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release -p nccl-net-plugin
install -D -m 0755 target/release/libnccl_net_ff.so "$prefix/lib/freeflow/libnccl-net-ff.so"
ln -sfn freeflow/libnccl-net-ff.so "$prefix/lib/libnccl-net-ff.so"
# Refresh the loader cache when PREFIX/lib is a directory it searches.
if [ -w /etc/ld.so.cache ] && ldconfig -v 2>/dev/null | grep -q "^$prefix/lib:"; then
    ldconfig
fi
echo "installed $prefix/lib/freeflow/libnccl-net-ff.so (and $prefix/lib/libnccl-net-ff.so)"
echo "use: NCCL_NET_PLUGIN=ff NCCL_NET=FreeFlow FF_ROUTER_SOCKET=/run/freeflow/ffrouter.sock"
echo "     (or NCCL_NET_PLUGIN=$prefix/lib/freeflow/libnccl-net-ff.so if $prefix/lib is not on the loader's path)"
