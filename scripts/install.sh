#!/bin/bash
# scripts/install.sh - the first README command: installs what is needed on
# a fresh Debian 12 machine, builds FreeFlow, and runs the demo (a router
# and two isolated containers, then the results table against UCX).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "run as root (apt-get, network namespaces): $0" >&2; exit 1; }
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
exec scripts/demo.sh
