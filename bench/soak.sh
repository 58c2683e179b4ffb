#!/bin/bash
# bench/soak.sh [SECONDS] - soak test (not in CI): one receiving container,
# a sending container with 16 connections and random-size checksummed
# messages; halfway through the sender is SIGKILLed and a new one connects.
# Passes when no message was corrupted or lost (gaps), and the router holds
# nothing afterwards. Default 300 s.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
half=$((secs / 2))
bin="$top/target/release"
work=$(mktemp -d /tmp/ffsoak.XXXXXX)
mkdir -p "$work/t/soak"
sock="$work/t/soak/ffrouter.sock"
"$bin/ffrouter" --tenant "soak=$sock" --log-level warn &
router=$!
trap 'kill $router 2>/dev/null; "$top/tools/ffcontainer" cleanup soak$$ >/dev/null 2>&1; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
run() { local n=$1; shift; "$top/tools/ffcontainer" run --name "soak$$-$n" --ip "10.77.0.$((60 + n))/24" --socket-dir "$work/t/soak" --pidfile "$work/pid.$n" -- "$bin/ffbench" "$@"; }
run 1 serve soak --secs "$secs" > "$work/recv.out" &
rpid=$!
for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$work/recv.out" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
echo "soak: ${secs}s, 16 connections, random sizes 32 B..1 MiB; sender killed and replaced at ${half}s" >&2
run 2 connect soak --handle "$h" --conns 16 --secs "$secs" --seed 1 > "$work/send1.out" &
s1=$!
sleep "$half"
kill -9 "$(cat "$work/pid.2")"
wait $s1 || true
echo "sender 1 killed: $(grep -c . "$work/send1.out") lines of output; starting sender 2" >&2
run 3 connect soak --handle "$h" --conns 16 --secs "$((secs - half))" --seed 2 > "$work/send2.out"
wait $rpid || echo "receiver failed" >&2
cat "$work/send2.out" "$work/recv.out" | grep RESULT
"$bin/ffrouter" stats --socket "$sock" | tr -d '\n' | sed 's/  */ /g'; echo
r=$(grep RESULT "$work/recv.out")
if echo "$r" | grep -q ' corrupt=0 gaps=0 ' && [ "$(echo "$r" | sed 's/.* messages=\([0-9]*\).*/\1/')" -gt 0 ]; then
    echo "SOAK PASS"
else
    echo "SOAK FAIL"; exit 1
fi
