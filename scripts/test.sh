#!/bin/bash
# scripts/test.sh - the second README command (and CI's): installs missing
# dependencies, builds, and runs every test. Needs root (namespaces).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces): sudo $0" >&2; exit 1; }
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 2
