#!/bin/bash
# bench/soak.sh [--across] [SECONDS] - soak test (not in CI): one receiving
# container, a sending container with 16 connections and random-size
# checksummed messages; halfway through the sender is SIGKILLed and a new
# one connects. Passes when no message was corrupted or lost (gaps), and
# the router holds nothing afterwards. Default 300 s. With --across the
# receiver and the senders are on two emulated hosts (bench/twohosts.sh:
# network namespaces, a router each, sealed TCP link), so every message
# crosses both routers and the link; the routers' link counters
# (ff_router_peer_link_drops_total) must show no link dropped.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
across=0
[ "${1:-}" = --across ] && { across=1; shift; }
secs=${1:-300}
half=$((secs / 2))
bin="$top/target/release"
if [ $across = 1 ]; then
    . "$top/bench/twohosts.sh"
    twohosts_router_flags=(--metrics-addr 127.0.0.1:9464)
    trap twohosts_down EXIT
    twohosts_up "$bin" 0
    socks=("$work/h0/bench" "$work/h1/bench")
    # Container n on host (n == 1 ? 0 : 1): the receiver on host 0.
    run() {
        local n=$1 h=1; shift
        [ "$n" = 1 ] && h=0
        local ns; ns=$([ $h = 0 ] && echo "$ns0" || echo "$ns1")
        "$top/tools/ffcontainer" run --name "$twohosts_prefix-$n" --ip "10.7$((h + 1)).0.$((60 + n))/24" \
            --bridge ffbr --host-netns "$ns" --socket-dir "${socks[$h]}" --pidfile "$work/pid.$n" -- "$bin/ffbench" "$@"
    }
    stats() { "$bin/ffrouter" stats --socket "${socks[0]}/ffrouter.sock" | tr -d '\n' | sed 's/  */ /g'; echo; }
else
    work=$(mktemp -d /tmp/ffsoak.XXXXXX)
    mkdir -p "$work/t/soak"
    sock="$work/t/soak/ffrouter.sock"
    "$bin/ffrouter" --tenant "soak=$sock" --log-level warn &
    router=$!
    trap 'kill $router 2>/dev/null; "$top/tools/ffcontainer" cleanup soak$$ >/dev/null 2>&1; rm -rf "$work"' EXIT
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    run() { local n=$1; shift; "$top/tools/ffcontainer" run --name "soak$$-$n" --ip "10.77.0.$((60 + n))/24" --socket-dir "$work/t/soak" --pidfile "$work/pid.$n" -- "$bin/ffbench" "$@"; }
    stats() { "$bin/ffrouter" stats --socket "$sock" | tr -d '\n' | sed 's/  */ /g'; echo; }
fi
run 1 serve soak --secs "$secs" > "$work/recv.out" &
rpid=$!
for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$work/recv.out" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
echo "soak: ${secs}s, 16 connections$([ $across = 1 ] && echo " across two hosts"), random sizes 32 B..1 MiB; sender killed and replaced at ${half}s" >&2
run 2 connect soak --handle "$h" --conns 16 --secs "$secs" --seed 1 > "$work/send1.out" &
s1=$!
sleep "$half"
kill -9 "$(cat "$work/pid.2")"
wait $s1 || true
echo "sender 1 killed: $(grep -c . "$work/send1.out") lines of output; starting sender 2" >&2
run 3 connect soak --handle "$h" --conns 16 --secs "$((secs - half))" --seed 2 > "$work/send2.out"
wait $rpid || echo "receiver failed" >&2
cat "$work/send2.out" "$work/recv.out" | grep RESULT
stats
ok=1
if [ $across = 1 ]; then
    for i in 0 1; do
        ns=$([ $i = 0 ] && echo "$ns0" || echo "$ns1")
        m=$(ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
            grep '^ff_router_peer_link_drops_total' || true)
        echo "host $i: $(echo "$m" | tr '\n' ' ')"
        echo "$m" | grep -qv ' 0$' && ok=0
        [ -n "$m" ] || ok=0
    done
fi
r=$(grep RESULT "$work/recv.out")
if [ $ok = 1 ] && echo "$r" | grep -q ' corrupt=0 gaps=0 ' && [ "$(echo "$r" | sed 's/.* messages=\([0-9]*\).*/\1/')" -gt 0 ]; then
    echo "SOAK PASS"
else
    echo "SOAK FAIL"; exit 1
fi
