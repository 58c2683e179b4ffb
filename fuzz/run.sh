#!/bin/bash
# fuzz/run.sh [SECONDS] - runs every fuzz target for SECONDS (default 120)
# with debug assertions, growing the committed corpus under fuzz/corpus/.
# Uses the stable toolchain (no sanitizer: Rust's own bounds and overflow
# checks catch memory errors in safe code; the unsafe ring reads are
# bounds-asserted in the ring_rx target).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-120}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz build -s none -O -a
for t in proto_decode ring_rx router_ops peer_wire link_open; do
    mkdir -p "corpus/$t"
    echo "== $t for ${secs}s" >&2
    cargo fuzz run -s none -O -a "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 2>&1 | grep -E '^(#[0-9]+.*DONE|Done|==|SUMMARY|.*panicked)' || true
done
