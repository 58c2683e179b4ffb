#!/bin/bash
# local-lat.sh BIN ITERS: ffbench pingpong 8 B on one host (two containers, one router), beside 2 busy loops unless NOLOAD
top=/work/main; bin=$1; work=$(mktemp -d /tmp/ffll.XXXXXX); mkdir -p $work/t
loaders=()
"$bin/ffrouter" --tenant "bench=$work/t/ffrouter.sock" --log-level warn & rp=$!
trap 'kill ${loaders[@]} $rp 2>/dev/null; wait 2>/dev/null; rm -rf $work' EXIT
for _ in $(seq 100); do [ -S "$work/t/ffrouter.sock" ] && break; sleep 0.05; done
[ "${NOLOAD:-}" ] || for _ in 1 2; do (while :; do :; done) & loaders+=($!); done
ctr() { local id=$1; shift; "$top/tools/ffcontainer" run --name "ffll$$-$id" --ip "10.77.0.$((100 + id))/24" --socket-dir "$work/t" -- "$bin/ffbench" "$@"; }
ctr 1 serve pingpong --size 8 --iters $2 > $work/srv.out & sp=$!
for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' $work/srv.out 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
ctr 2 connect pingpong --size 8 --iters $2 --handle "$h" | grep '^RESULT' | grep -o "half_rtt.*"
wait $sp
