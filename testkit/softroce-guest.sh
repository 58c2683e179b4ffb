#!/bin/sh
# testkit/softroce-guest.sh ID - runs inside the guests of testkit/softroce.sh
# (copied to /share/guest.sh; the guest's init runs it after bringing up
# rxe0). Guest 1 (10.0.0.1) serves, guest 2 (10.0.0.2) connects; they meet
# through files in /share/sync. Every step writes its name to /share/stepID
# first, so the host can say which one failed. Lines starting with "OK " and
# "BENCH " are the results.
id=$1
S=/share
B=$S/bin
Y=$S/sync
mode=$(cat $S/mode)
me=10.0.0.$id
server=10.0.0.1
[ "$id" = 1 ] && role=serve || role=connect

step() { echo "$1" > $S/step$id; echo "=== $(date +%T) $1"; }
# rxe's counters (retries, RNR NAKs, sequence errors) and the kernel's
# last words: what the device saw.
device_state() {
    echo "--- rxe0 counters (non-zero)"
    for f in /sys/class/infiniband/rxe0/ports/1/hw_counters/*; do
        v=$(cat "$f" 2>/dev/null)
        [ -n "$v" ] && [ "$v" != 0 ] && echo "$(basename "$f") $v"
    done
    echo "--- network drops"
    net_drops
    echo "--- dmesg (last lines)"
    dmesg | tail -15
}
# Where the guest's network stack dropped packets (rxe retransmits what is
# lost), on one line: the NIC, its queue, the softnet backlog, IP and UDP.
net_drops() {
    nic=$(ls /sys/class/net | grep -v '^lo$' | head -1)
    b=0
    while read -r _ d _; do b=$((b + 0x$d)); done < /proc/net/softnet_stat
    echo "$nic rx_dropped $(cat /sys/class/net/$nic/statistics/rx_dropped)" \
        "tx_dropped $(cat /sys/class/net/$nic/statistics/tx_dropped)" \
        "qdisc_dropped $(tc -s qdisc show dev "$nic" | sed -n 's/.*(dropped \([0-9]*\),.*/\1/p' | awk '{ d += $1 } END { print d + 0 }')" \
        "softnet_dropped $b" \
        $(nstat -az 2>/dev/null | awk '/^(IpInDiscards|IpOutDiscards|UdpInErrors|UdpRcvbufErrors|UdpSndbufErrors) / { print $1, $2 }')
}
fail() {
    echo "FAILED: $*"
    touch $Y/abort
    device_state
    exit 1
}
# waitfor FILE [SECONDS]: until FILE exists; fails on timeout or abort.
waitfor() {
    local w=0
    while [ ! -e "$1" ]; do
        [ -e $Y/abort ] && { echo "the other guest failed"; exit 1; }
        w=$((w + 1))
        [ $w -gt $((${2:-600} * 5)) ] && fail "timed out waiting for $(basename "$1")"
        sleep 0.2
    done
}
# The RoCE v2 GID index of our IPv4 address (a plain shell look at sysfs,
# independent of the router's own choice).
gid_index() {
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' $(echo "$me" | tr . ' '))
    for f in /sys/class/infiniband/rxe0/ports/1/gids/*; do
        i=$(basename "$f")
        if [ "$(cat "$f")" = "$want" ] && [ "$(cat /sys/class/infiniband/rxe0/ports/1/gid_attrs/types/"$i" 2>/dev/null)" = "RoCE v2" ]; then
            echo "$i"
            return
        fi
    done
}

# perftest/ibv pair: NAME, then the command (the connector adds the server's
# address). A side that fails fails the run.
verbs_pair() {
    verbs_run fail "$@"
}

# verbs_try NAME COMMAND...: the same, but perftest under TCG sometimes
# gives up on its own clock calibration ("Can't produce a report"): in the
# bench that is a missing sample (SKIP, and an empty output), not a failure.
verbs_try() {
    verbs_run skip "$@"
}

verbs_run() {
    how=$1
    name=$2
    shift 2
    if [ $role = serve ]; then
        timeout 300 "$@" > /tmp/$name.out 2>&1 &
        pid=$!
        sleep 2
        touch $Y/$name.ready
        wait $pid || gave_up $how "$name (server side)" $name
    else
        waitfor $Y/$name.ready
        # The server's 2 s head start is not always enough under TCG: a
        # client that found nobody listening yet ("Couldn't connect to",
        # perftest's and rdma-core's words) tries again, for up to 30 s.
        local try=0
        until timeout 300 "$@" $server > /tmp/$name.out 2>&1; do
            try=$((try + 1))
            if [ $try -lt 15 ] && grep -q "Couldn't connect to" /tmp/$name.out; then
                sleep 2
                continue
            fi
            gave_up $how "$name" $name
            break
        done
        [ $how = fail ] && cat /tmp/$name.out
    fi
    return 0
}

# gave_up fail|skip WHAT NAME: a side of a verbs pair failed.
gave_up() {
    if [ $1 = fail ]; then
        cat /tmp/$3.out
        fail "$2"
    fi
    if [ $role = serve ]; then
        echo "SKIP $2: $(tail -2 /tmp/$3.out | tr '\n' ' ')"
    else
        cat /tmp/$3.out
        echo "SKIP $2"
    fi
    : > /tmp/$3.out
}

# A verbs program over ff0 (ffverbs, the router on /tmp/ff.sock) instead of
# rxe0: our libibverbs.so.1 comes first (a command prefix, word-split).
FFV="env LD_LIBRARY_PATH=$B/vlib FF_ROUTER_SOCKET=/tmp/ff.sock"

# A pair through the routers: NAME SOCKET "SERVE-COMMAND" "CONNECT-COMMAND"
# args... The serving side prints "HANDLE h", which goes through /share to
# the connecting side as --handle h.
pair() {
    name=$1
    sock=$2
    serve=$3
    connect=$4
    shift 4
    if [ $role = serve ]; then
        FF_ROUTER_SOCKET=$sock $serve "$@" > /tmp/$name.out 2>&1 &
        pid=$!
        local w=0
        until grep -q '^HANDLE ' /tmp/$name.out; do
            w=$((w + 1))
            [ $w -gt 150 ] && { cat /tmp/$name.out; fail "$name: no handle"; }
            kill -0 $pid 2>/dev/null || { cat /tmp/$name.out; fail "$name: the serving side exited"; }
            sleep 0.2
        done
        sed -n 's/^HANDLE //p' /tmp/$name.out > $Y/$name.handle.tmp
        mv $Y/$name.handle.tmp $Y/$name.handle
        wait $pid || { cat /tmp/$name.out; fail "$name (serving side)"; }
        cat /tmp/$name.out
    else
        waitfor $Y/$name.handle
        FF_ROUTER_SOCKET=$sock timeout 600 $connect "$@" --handle "$(cat $Y/$name.handle)" > /tmp/$name.out 2>&1 ||
            { cat /tmp/$name.out; fail "$name"; }
        cat /tmp/$name.out
    fi
}

# ffbench pair: NAME SOCKET ffbench-args...
ff_pair() {
    name=$1
    sock=$2
    shift 2
    pair "$name" "$sock" "$B/ffbench serve" "$B/ffbench connect" "$@"
}

# The NCCL net plugin, driven as NCCL's proxy does (nccl-harness): NAME
# SOCKET nccl-harness-args...
nccl_pair() {
    name=$1
    sock=$2
    shift 2
    pair "$name" "$sock" "$B/nccl-harness recv --lib $B/libnccl_net_ff.so" "$B/nccl-harness send --lib $B/libnccl_net_ff.so" "$@"
}

# Checks trim idle rings after half a second (default 2 s), so that a
# pause of a few seconds has them trimmed: over RDMA that lets go of their
# registration first, and the next big transfer registers them again.
trim=""
[ "$mode" = check ] && trim="FF_ROUTER_TRIM_IDLE_MS=500"

# router NAME SOCKET PORT TRANSPORT: starts one and waits for its socket.
router() {
    log=$S/$1$id.log
    env $(grep -v '=$' $S/router.env) $trim $B/ffrouter --socket "$2" --listen-addr "$me:$3" --insecure-no-peer-secret --peer-transport "$4" --peer-streams 4 --log-level info,ffrouter::link=debug > "$log" 2>&1 &
    local w=0
    until [ -S "$2" ]; do
        w=$((w + 1))
        [ $w -gt 150 ] && { cat "$log"; fail "$1 did not start"; }
        sleep 0.2
    done
}

step "rxe0 is up"
cat $S/setup$id.log
ibv_devinfo -d rxe0 | grep -E 'state|active_mtu|link_layer' || fail "no rxe0"
ibv_devinfo -d rxe0 | grep -q PORT_ACTIVE || fail "rxe0 port not active"
g=$(gid_index)
[ -n "$g" ] || fail "no RoCE v2 GID of $me on rxe0"
echo "RoCE v2 GID of $me: index $g"
echo "OK guest$id rxe0 active, GID index $g"

step "ibv_rc_pingpong (control: plain verbs between the guests)"
verbs_pair rc_pingpong ibv_rc_pingpong -d rxe0 -g "$g" -n 50
echo "OK ibv_rc_pingpong"

step "routers over RDMA (--peer-transport rdma, 4 streams, GID chosen by the router)"
router router /tmp/ff.sock 7070 rdma
grep 'router-to-router transport' $S/router$id.log
grep -q "RDMA on rxe0 port 1 GID index $g " $S/router$id.log || fail "the router did not pick rxe0's RoCE v2 GID $g"
echo "OK guest$id router picked rxe0 port 1 GID index $g"

if [ "$mode" = check ]; then
    step "ffbench check over RDMA (sizes up to 4 MiB+1, both ways, checksummed)"
    ff_pair check /tmp/ff.sock check --iters 48 --max-size 4194305 --window 8
    echo "OK ffbench check (48 messages each way, sizes 0 to 4 MiB+1, crc32 and bytes compared)"

    step "ffbench check over RDMA through the rings, resting halfway (idle rings let go of by the NIC, trimmed, registered again)"
    ff_pair rest /tmp/ff.sock check --iters 24 --max-size 4194305 --window 4 --no-register --rest 3
    let_go=$(grep -c 'let go of an idle ring' $S/router$id.log || true)
    again=$(grep -c 'of a connection file with the NIC again' $S/router$id.log || true)
    [ "$let_go" -gt 0 ] || fail "no idle ring was let go of (and trimmed) during the rest"
    [ "$again" -gt 0 ] || fail "no ring was registered again after the rest"
    echo "OK ffbench check with a rest (24 messages each way through the rings, sizes 0 to 4 MiB+1, crc32 and bytes compared; $let_go idle rings let go of and trimmed, $again registered again)"

    step "ffbench pingpong over RDMA"
    ff_pair pingpong /tmp/ff.sock pingpong --size 8 --iters 100
    echo "OK ffbench pingpong"

    step "ffbench stream over RDMA"
    ff_pair stream /tmp/ff.sock stream --size 1048576 --iters 16 --window 8
    echo "OK ffbench stream"

    step "NCCL net plugin over RDMA (nccl-harness, 2 comms, sizes up to 4 MiB+3, checksummed)"
    nccl_pair nccl /tmp/ff.sock --mode check --comms 2 --window 8 --sizes 0,1,8,4095,65537,1048576,4194307
    grep -q '^RESULT .*mismatches=0 .*ok=1' /tmp/nccl.out || fail "nccl-harness did not report ok=1"
    echo "OK nccl-harness (NCCL net plugin, ABI v12, 2 comms, sizes 0 to 4 MiB+3, crc32 compared)"

    step "UCX over ff over RDMA (ucx_perftest, UCX_TLS=ff,self)"
    # ucx_perftest meets its peer over TCP (port 13337) and must then reach
    # it through ff alone. Host memory at zero-copy sizes: rendezvous over
    # shadow memory.
    for t in "tag_lat -s 8 -n 200" "tag_bw -s 65536 -n 100" "tag_bw -m host -s 4194304 -n 10"; do
        if [ $role = serve ]; then
            FF_ROUTER_SOCKET=/tmp/ff.sock UCX_TLS=ff,self LD_PRELOAD=$B/libuct_ff.so timeout 300 ucx_perftest > /tmp/ucx.out 2>&1 &
            pid=$!
            sleep 2
            touch "$Y/ucx.$t.ready"
            wait $pid || { cat /tmp/ucx.out; fail "ucx_perftest $t (server side)"; }
        else
            waitfor "$Y/ucx.$t.ready"
            FF_ROUTER_SOCKET=/tmp/ff.sock UCX_TLS=ff,self LD_PRELOAD=$B/libuct_ff.so timeout 300 ucx_perftest $server -t $t > /tmp/ucx.out 2>&1 ||
                { cat /tmp/ucx.out; fail "ucx_perftest $t"; }
            grep Final /tmp/ucx.out || { cat /tmp/ucx.out; fail "ucx_perftest $t: no result"; }
        fi
    done
    echo "OK ucx_perftest over ff (tag_lat 8 B, tag_bw 64 KiB, tag_bw -m host 4 MiB)"

    step "the link stayed up"
    grep WARN $S/router$id.log | grep -v insecure-no-peer-secret
    grep -E 'is down|ERROR' $S/router$id.log && fail "the router logged a problem"
    grep -q 'transport: RDMA' $S/router$id.log || fail "not RDMA"
    echo "OK guest$id router log clean"
    # ffbench's buffers are shadow regions: READ by the NIC in place.
    grep -q 'registered a shadow region' $S/router$id.log || fail "no shadow region was registered with the NIC"
    echo "OK guest$id router registered shadow regions with rxe0"
else
    step "router over TCP (baseline)"
    router router-tcp /tmp/fft.sock 7071 tcp
    rounds=$(cat $S/rounds 2>/dev/null || echo 1)
    # The cost of one test, on both guests: busy CPU (all processes, kernel
    # work such as rxe's included), rxe0's packets sent and received, and
    # its retransmissions after an ACK timeout (completer_retry_err).
    # Each guest counts from just before its side starts to just after it
    # ends; the connecting side adds the serving side's count to its
    # BENCH line (cpu_s, pkts, bytes moved).
    snap() {
        echo "$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)" \
            "$(( $(cat $RXC/sent_pkts 2>/dev/null || echo 0) + $(cat $RXC/rcvd_pkts 2>/dev/null || echo 0) ))" \
            "$(cat $RXC/completer_retry_err 2>/dev/null || echo 0)"
    }
    RXC=/sys/class/infiniband/rxe0/ports/1/hw_counters
    HZ=$(getconf CLK_TCK)
    # costed COMMAND NAME ARGS...: runs a pair command (verbs_try, ff_pair)
    # and keeps this guest's cost of it under its NAME.
    costed() {
        local name=$2 a b
        a=$(snap)
        "$@"
        b=$(snap)
        echo "$a $b" | awk -v hz=$HZ '{ printf "%.2f %d %d\n", ($4 - $1) / hz, $5 - $2, $6 - $3 }' > $Y/$name.$role.cost
    }
    # cost NAME BYTES: the test's fields for the BENCH line; none when the
    # serving side's count is missing (it ends soon after us, or when its
    # perftest gives up: timeout 300).
    cost() {
        [ $role = connect ] || return 0
        local w=0
        while [ ! -e $Y/$1.serve.cost ] && [ $w -lt 1650 ] && [ ! -e $Y/abort ]; do
            w=$((w + 1))
            sleep 0.2
        done
        [ -e $Y/$1.serve.cost ] || return 0
        cat $Y/$1.connect.cost $Y/$1.serve.cost | awk -v bytes=$2 '{ c += $1; p += $2; r += $3 } END { printf "cpu_s=%.2f pkts=%d retries=%d bytes=%d", c, p, r, bytes }'
    }
    bench() { [ $role = connect ] && echo "BENCH round=$round $*"; return 0; }
    pick() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" /tmp/$2.out | tail -1; }
    # perftest's table row: the line that starts with the size.
    bw_of() { awk -v s="$1" '$1 == s { print $4 }' /tmp/$2.out | tail -1; }
    for round in $(seq $rounds); do
        for size in $(cat $S/sizes 2>/dev/null || echo 65536 1048576 4194304); do
            case $size in 65536) n=500 ;; 1048576) n=20 ;; *) n=8 ;; esac
            # ffbench moves a warm-up of max(n / 10, 2) messages first.
            nff=$(( n + (n / 10 > 2 ? n / 10 : 2) ))
            step "round $round: bench $size: ib_write_bw"
            costed verbs_try wbw${size}r$round ib_write_bw -d rxe0 -x "$g" -s $size -n $n
            bench "tool=ib_write_bw size=$size iters=$n mb_per_s=$(bw_of $size wbw${size}r$round) $(cost wbw${size}r$round $((size * n)))"
            step "round $round: bench $size: ib_read_bw"
            costed verbs_try rbw${size}r$round ib_read_bw -d rxe0 -x "$g" -s $size -n $n
            bench "tool=ib_read_bw size=$size iters=$n mb_per_s=$(bw_of $size rbw${size}r$round) $(cost rbw${size}r$round $((size * n)))"
            step "round $round: bench $size: ib_write_bw over ff0 (ffverbs, routers over RDMA)"
            costed verbs_try fwbw${size}r$round $FFV ib_write_bw -d ff0 -s $size -n $n
            bench "tool=ff0_ib_write_bw size=$size iters=$n mb_per_s=$(bw_of $size fwbw${size}r$round) $(cost fwbw${size}r$round $((size * n)))"
            # As many messages in flight as perftest keeps: its tx depth
            # (128), at most its iterations.
            w=$(( n < 128 ? n : 128 ))
            step "round $round: bench $size: ff stream over RDMA, window $w"
            costed ff_pair ffr${size}r$round /tmp/ff.sock stream --size $size --iters $n --window $w
            bench "tool=ff_rdma_stream size=$size iters=$n window=$w mb_per_s=$(pick mb_per_s ffr${size}r$round) $(cost ffr${size}r$round $((size * nff)))"
            if [ $w != 8 ]; then
                # NCCL keeps 8 requests in flight per connection.
                step "round $round: bench $size: ff stream over RDMA, window 8"
                costed ff_pair ffr8w${size}r$round /tmp/ff.sock stream --size $size --iters $n --window 8
                bench "tool=ff_rdma_stream_w8 size=$size iters=$n window=8 mb_per_s=$(pick mb_per_s ffr8w${size}r$round) $(cost ffr8w${size}r$round $((size * nff)))"
            fi
            step "round $round: bench $size: ff stream over TCP, window $w"
            costed ff_pair fft${size}r$round /tmp/fft.sock stream --size $size --iters $n --window $w
            bench "tool=ff_tcp_stream size=$size iters=$n window=$w mb_per_s=$(pick mb_per_s fft${size}r$round) $(cost fft${size}r$round $((size * nff)))"
        done
        step "round $round: bench 8 B latency: ib_write_lat"
        verbs_try wlatr$round ib_write_lat -d rxe0 -x "$g" -s 8 -n 200
        bench "tool=ib_write_lat size=8 iters=200 lat_us=$(awk '$1 == 8 { print $5 }' /tmp/wlatr$round.out | tail -1)"
        step "round $round: bench 8 B latency: ib_write_lat over ff0"
        verbs_try fwlatr$round $FFV ib_write_lat -d ff0 -s 8 -n 200
        bench "tool=ff0_ib_write_lat size=8 iters=200 lat_us=$(awk '$1 == 8 { print $5 }' /tmp/fwlatr$round.out | tail -1)"
        step "round $round: bench 8 B latency: ff pingpong over RDMA"
        ff_pair ffrlatr$round /tmp/ff.sock pingpong --size 8 --iters 100
        bench "tool=ff_rdma_pingpong size=8 iters=100 lat_us=$(pick half_rtt_us_p50 ffrlatr$round)"
        step "round $round: bench 8 B latency: ff pingpong over TCP"
        ff_pair fftlatr$round /tmp/fft.sock pingpong --size 8 --iters 100
        bench "tool=ff_tcp_pingpong size=8 iters=100 lat_us=$(pick half_rtt_us_p50 fftlatr$round)"
    done
    grep -q 'is down' $S/router$id.log && fail "the RDMA link went down during the bench"
    echo "OK bench"
fi

step "done"
device_state
# One line for the host to print: how lossy the emulated fabric was.
c() { cat /sys/class/infiniband/rxe0/ports/1/hw_counters/$1 2>/dev/null || echo -; }
echo "COUNTERS guest$id rxe0 completer_retry_err $(c completer_retry_err) duplicate_request $(c duplicate_request); $(net_drops)"
touch $Y/done$id
# Keep the router up until the other guest is done too.
waitfor $Y/done$((3 - id)) 600
exit 0
