#!/bin/bash
# pair.sh REPS "SIZES" NAME=BINDIR... : ffbench stream between two emulated hosts,
# variants alternating, sealed links. Env: MODE=stream|pingpong, ITERS_SCALE, EXTRA (ffbench args), RENV (router env)
set -euo pipefail
top=/work/wt-stream
here=$top/bench
reps=$1; sizes=$2; shift 2
. "$here/twohosts.sh"
cg=/sys/fs/cgroup/cpuacct/ffpair-$$
mkdir "$cg"; echo $$ > "$cg/cgroup.procs"
export FF_BENCH_CPU_CGROUP="$cg"; exec 6<"$cg/cpuacct.usage"; export FF_BENCH_CPU_FD=6
trap 'twohosts_down; exec 6<&-; echo $$ > /sys/fs/cgroup/cpuacct/cgroup.procs; rmdir $cg' EXIT
[ -n "${RENV:-}" ] && export $RENV
first=${1#*=}
twohosts_up "$first" ${INSECURE:-0}
seq=0
ctr() { local h=$1 id=$2 b=$3; shift 3; local ns; ns=$([ "$h" = 0 ] && echo "$ns0" || echo "$ns1")
  "$top/tools/ffcontainer" run --name "ffm$$-$id" --ip "10.7$((h + 1)).0.$((100 + id % 150))/24" \
        --bridge ffbr --host-netns "$ns" --socket-dir "$work/h$h/bench" -- "$b/ffbench" "$@"; }
pair() { local b=$1; shift; seq=$((seq+2)); local a=$((seq-1)) c=$seq sout="$work/srv.$seq.out"
  ctr 0 $a "$b" serve "$@" > "$sout" & local spid=$! h=""
  for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$sout" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
  ctr 1 $c "$b" connect "$@" --handle "$h" | grep '^RESULT'; wait "$spid"; }
iters() { case $1 in 8) echo 100000;; 65536) echo 10000;; 1048576) echo 700;; 4194304) echo 200;; *) echo 100;; esac; }
for r in $(seq "$reps"); do
  for v in "$@"; do
    name=${v%%=*} b=${v#*=}
    if [ "$name" = tcp ] || [ "${name#ucxff}" != "$name" ]; then
      tls=$([ $name = tcp ] && echo tcp,self || echo ff,self)
      if [ $name != tcp ]; then twohosts_bin=$b; twohosts_routers ${INSECURE:-0}; fi
      tests=""; for s in $sizes; do case $s in 8) tests="$tests lat";; 65536) tests="$tests bw64k";; 1048576) tests="$tests bw1m";; 4194304) tests="$tests bw4m";; esac; done
      rm -f $work/ucx.csv
      UCX_BASELINE_TESTS="$tests" UCX_BASELINE_TLS="$tls" UCX_BASELINE_SUITE=multihost UCX_BASELINE_BRIDGE=ffbr \
        UCX_BASELINE_SERVER_NETNS="$ns0" UCX_BASELINE_CLIENT_NETNS="$ns1" \
        UCX_BASELINE_SERVER_IP=10.71.0.251/24 UCX_BASELINE_CLIENT_IP=10.72.0.252/24 \
        UCX_BASELINE_FF_LIB="$b/libuct_ff.so" \
        UCX_BASELINE_SERVER_SOCKDIR="$work/h0/bench" UCX_BASELINE_CLIENT_SOCKDIR="$work/h1/bench" \
        "$here/ucx_baselines.sh" "$work/ucx.csv" >/dev/null 2>&1 || true
      grep -v "^suite" $work/ucx.csv | sed "s/\"[^\"]*\"/T/" | awk -F, -v r=$r -v n=$name "{print r, n, \$4, \$3\"=\"\$5, \$6}"
      continue
    fi
    twohosts_bin=$b
    twohosts_routers ${INSECURE:-0}
    for s in $sizes; do
      if [ "${MODE:-stream}" = pingpong ]; then
        res=$(pair "$b" pingpong --size $s --iters 20000 ${EXTRA:-})
        echo "$r $name $s $(echo "$res" | sed -n 's/.*half_rtt_us_p50=\([0-9.]*\).*half_rtt_us_mean=\([0-9.]*\).*/p50=\1 mean=\2/p')"
      else
        res=$(pair "$b" stream --size $s --iters $(( $(iters $s) * ${ITERS_SCALE:-1} )) --window 32 ${EXTRA:-})
        echo "$r $name $s $(echo "$res" | sed -n 's/.*mb_per_s=\([0-9.]*\).*cpu_s_per_gb=\([0-9.a-z]*\).*/MBps=\1 cpu_per_gb=\2/p')"
      fi
    done
  done
done
