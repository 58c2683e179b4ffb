#!/bin/bash
# bench/ab.sh - what a change costs: ff on one host and between two hosts,
# for several builds or settings, alternating within one run.
#
#   bench/ab.sh [--rounds N] [--quick] [--out DIR] NAME=BINDIR[:insecure] ...
#
# BINDIR holds a build's ffrouter and ffbench (e.g. target/release of this
# checkout, or of an older commit built elsewhere). ":insecure" starts the
# routers with --insecure-no-peer-secret (links in clear) instead of a peer
# secret; builds older than the flag take no such suffix. Every round runs,
# for each variant in turn, the ff part of bench/run.sh (two containers on
# one host) and of bench/multihost.sh (two emulated hosts), so that all
# variants see the same background load. DIR/README.md gets the medians
# per variant and their ratio to the first variant (plotted in DIR/ab.png);
# DIR/results.csv all
# rows, with a "variant" column. Needs root. Default DIR:
# bench/results/ab-<date>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=5 quick="" out=""
variants=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --quick) quick=--quick ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n 2,17p "$0"; exit 0 ;;
        *=*) variants+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#variants[@]} -ge 1 ] || { echo "give at least one NAME=BINDIR[:insecure]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench/ab.sh needs root (network namespaces)" >&2; exit 1; }
[ -n "$out" ] || out="$top/bench/results/ab-$(date +%Y-%m-%d)"
mkdir -p "$out"
csv="$out/results.csv"
echo "variant,round,suite,transport,test,size_bytes,value,unit" > "$csv"
tmp=$(mktemp -d /tmp/ffab.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

for round in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        name=${v%%=*} spec=${v#*=}
        dir=${spec%%:*} mode=""
        [ "$spec" != "$dir" ] && mode=${spec#*:}
        extra=()
        [ "$mode" = insecure ] && extra=(--insecure)
        echo "== round $round of $rounds: $name ($dir${mode:+, $mode})" >&2
        FF_BENCH_SKIP_UCX=1 "$here/run.sh" $quick --bin "$dir" --out "$tmp/one" > /dev/null
        FF_BENCH_NO_CGROUP=1 "$here/multihost.sh" $quick --rounds 1 --only ff --bin "$dir" --out "$tmp/multi" "${extra[@]}" > /dev/null
        tail -n +2 "$tmp/one/results.csv" "$tmp/multi/results.csv" | grep -v '^==>' | grep -v '^$' |
            sed "s/^/$name,$round,/" >> "$csv"
    done
done

{
    echo "# A/B: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "- this checkout: commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    for v in "${variants[@]}"; do echo "- variant $v"; done
    echo "- command: bench/ab.sh --rounds $rounds $quick ${variants[*]}"
    echo
    /usr/bin/python3 "$here/ab_report.py" "$csv" "$out/ab.png"
} | tee "$out/README.md"
