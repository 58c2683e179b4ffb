#!/bin/bash
# bench/lat_ab.sh - cross-host ping-pong of several builds, alternating
# many times within one run (a latency A/B that is quicker, so can have
# more rounds, than bench/ab.sh).
#
#   bench/lat_ab.sh [--rounds N] [--iters N] [--size BYTES] [--cpus "R0 R1 S C"] [--out FILE] NAME=BINDIR[,clear] ...
#
# Two emulated hosts (bench/twohosts.sh; links sealed, or in clear for a
# variant given as NAME=BINDIR,clear); each round restarts both routers
# with each variant in turn and runs `ffbench pingpong --size BYTES`
# (default 8) between a container on each host (that build's ffbench
# too). Rows "NAME,ROUND,p50_us,mean_us,p99_us" go to FILE (default
# /tmp/lat_ab.csv), then the medians per variant. --cpus pins host 0's
# router, host 1's router, the serving container (host 0) and the
# connecting one (host 1) to those CPUs ("-": left to the scheduler), as
# bench/hosts_ucx_ab.sh's. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
rounds=10 iters=20000 size=8 out=/tmp/lat_ab.csv cpus=""
variants=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --iters) iters=$2; shift ;;
        --size) size=$2; shift ;;
        --out) out=$2; shift ;;
        --cpus) cpus=$2; shift ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *=*) variants+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#variants[@]} -ge 1 ] || { echo "give at least one NAME=BINDIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench/lat_ab.sh needs root (network namespaces)" >&2; exit 1; }
. "$here/twohosts.sh"
trap twohosts_down EXIT
pin=(- -)
if [ -n "$cpus" ]; then
    twohosts_place "$cpus"
    pin=("${twohosts_pod_cpus[@]}")
fi
v0=${variants[0]#*=}
twohosts_up "${v0%,clear}" 0
echo "variant,round,p50_us,mean_us,p99_us" > "$out"
id=0
ctr() { # ctr HOST BIN ID ARGS...
    local h=$1 b=$2 id=$3 p=(); shift 3
    [ "${pin[$h]}" = - ] || p=(taskset -c "${pin[$h]}")
    twohosts_pod "$h" "$id" bench ${p[@]+"${p[@]}"} "$b/ffbench" "$@"
}
val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
for round in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        name=${v%%=*} dir=${v#*=} clear=0
        case "$dir" in *,clear) dir=${dir%,clear} clear=1 ;; esac
        twohosts_bin=$dir
        twohosts_routers "$clear"
        sleep 0.3
        sout="$work/srv.out"
        id=$((id + 2))
        ctr 0 "$dir" "$id" serve pingpong --size "$size" --iters "$iters" > "$sout" &
        spid=$!
        h=""
        for _ in $(seq 400); do
            h=$(sed -n 's/^HANDLE //p' "$sout" 2>/dev/null | head -1)
            [ -n "$h" ] && break
            sleep 0.05
        done
        r=$(ctr 1 "$dir" $((id + 1)) connect pingpong --size "$size" --iters "$iters" --handle "$h" | grep '^RESULT')
        wait "$spid" || true
        echo "$name,$round,$(echo "$r" | val half_rtt_us_p50),$(echo "$r" | val half_rtt_us_mean),$(echo "$r" | val half_rtt_us_p99)" | tee -a "$out"
    done
done
/usr/bin/python3 - "$out" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for name in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == name]
    med = lambda k: statistics.median(float(r[k]) for r in mine)
    print(f"{name}: {len(mine)} rounds, medians of the rounds' p50 {med('p50_us'):.2f} us, mean {med('mean_us'):.2f} us, p99 {med('p99_us'):.2f} us")
EOF
