#!/bin/bash
# bench/allreduce_hosts.sh - allreduce across two emulated hosts, Open MPI
# over FreeFlow (UCX_TLS=ff,self) vs over UCX tcp,self, in one run.
#
#   bench/allreduce_hosts.sh [--rounds N] [--iters N] [--count FLOATS]
#                            [--tf|--no-tf] [--tf-rounds N] [--tf-steps N]
#                            [--no-mpi] [--ff-env VAR=VALUE]... [--transports "T ..."]
#                            [--pin] [--bin DIR] [--out DIR] [--quick]
#
# The two hosts are bench/twohosts.sh's (network namespaces joined by a
# veth, a router on each). One long-lived container ("pod") on each host;
# mpirun runs in host 0's namespace and starts one rank in each pod through
# tools/ffrsh (as mpi-operator does with kubectl exec), the way
# ucx-transport/tests/multihost.rs runs its Open MPI job. The same two pods
# serve every transport (--transports, default "ff ff-clear tcp,self"):
#   ff:       UCX_TLS=ff,self, LD_PRELOAD=libuct_ff.so: through both
#             routers and the link between them, sealed with a peer secret
#             (what a cluster runs; default settings: shadow memory and the
#             registration cache on; --ff-env adds VAR=VALUE to the ff runs'
#             environment, e.g. UCX_FF_SHADOW=n);
#   ff-clear: the same with the routers restarted with
#             --insecure-no-peer-secret (links in clear, as UCX tcp is);
#   tcp,self: UCX_TLS=tcp,self, UCX_NET_DEVICES=eth0: UCX's TCP straight
#             between the pods, over the same bridges and veth;
#   ff+VAR=VALUE[+VAR=VALUE...] (or ff-clear+...): ff with settings, e.g.
#             ff+UCX_FF_SHADOW=n, ff+UCX_RNDV_SCHEME=put_zcopy.
# A run fails unless UCX's lanes to the other rank are the ones asked for.
#
# Part 1, each round (--rounds, default 5; the transports take turns, the
# order rotating every round): bench/mpi/allreduce.c, COUNT floats
# (default 7,400,000 = 29.6 MB, a ResNet-ish gradient), 3 warm-up then
# ITERS (default 40) timed MPI_Allreduce calls back to back, results
# checked. Rows: time per allreduce (median of the iterations; each
# iteration the slower rank's), its mean, the CPU the whole machine spent
# per allreduce over the timed loop (every process of both hosts, the
# routers and the kernel, from /proc/stat), and the machine's CPU seconds
# and wall seconds over the whole mpirun (start-up included).
# --no-mpi skips part 1; --quick is a smoke test (1 round of 5 iterations,
# 1 TF round of 40 steps). --pin gives each emulated host a CPU of its own,
# as real hosts have their own cores: host 0's router and rank on CPU 0,
# host 1's on CPU 1 (taskset); by default the scheduler places both hosts'
# threads on both CPUs, and stacks them (see docs/many-hosts.md).
# Part 2 (--tf, default when the venv of examples/tensorflow/setup.sh
# exists; --no-tf skips it): examples/tensorflow/train.py (Horovod over
# Open MPI + UCX, one rank per host) for --tf-rounds rounds (default 3)
# of --tf-steps steps (default 60), taking turns the same way: images/s,
# loss first -> last, one gradient allreduce (29.6 MB), machine CPU
# seconds of the run.
#
# Each run starts once the machine has been idle for a second (up to 60 s)
# and is run again (up to 3 times) if other programs took more than a tenth
# of the benchmark's own CPU meanwhile (the machine's busy CPU from
# /proc/stat minus the job's processes, counted by bench/subreap.py, and
# the routers'), so that a build beside it does not decide the result.
# Rows go to DIR/results.csv (suite allreduce or tf), the table of medians
# and the targets to DIR/README.md, the plot to DIR/plot-time.png.
# DIR defaults to bench/results/allreduce-hosts-<date>. FF_ALLREDUCE_LOG=FILE
# appends every job's output (UCX's info log included) to FILE. Every mpirun runs
# under a timeout (a hang is an error). Needs root, Open MPI (mpicc,
# mpirun), UCX 1.13 and a release build (--bin, default target/release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
cmdline="$*"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rounds=5 iters=40 count=7400000 out="" bin="" transports="ff ff-clear tcp,self" tf=auto tf_rounds=3 tf_steps=60 quick=0 part1=1 pin=0
ff_env=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --iters) iters=$2; shift ;;
        --count) count=$2; shift ;;
        --tf) tf=1 ;;
        --no-tf) tf=0 ;;
        --no-mpi) part1=0 ;;
        --ff-env) ff_env+=(-x "$2"); shift ;;
        --tf-rounds) tf_rounds=$2; shift ;;
        --tf-steps) tf_steps=$2; shift ;;
        --transports) transports=$2; shift ;;
        --bin) bin=$2; shift ;;
        --out) out=$2; shift ;;
        --quick) quick=1 ;;
        --pin) pin=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ $quick = 1 ]; then rounds=1 iters=5 tf_rounds=1 tf_steps=40; fi
for t in $transports; do
    case "$t" in
        ff|ff-clear|tcp,self|ff+?*=*|ff-clear+?*=*) ;;
        *) echo "unknown transport $t (ff, ff-clear, tcp,self, ff+VAR=VALUE[+VAR=VALUE...])" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/allreduce_hosts.sh needs root (network namespaces)" >&2; exit 1; }
[ $pin = 0 ] || [ "$(nproc)" -ge 2 ] || { echo "--pin needs two CPUs" >&2; exit 2; }
[ -n "$bin" ] || bin="$top/target/release"
bin=$(cd "$bin" && pwd)
lib="$bin/libuct_ff.so"
for f in "$bin/ffrouter" "$lib"; do
    [ -e "$f" ] || { echo "missing $f: run cargo build --release --workspace" >&2; exit 1; }
done
for c in mpicc mpirun ucx_info timeout; do
    command -v $c >/dev/null || { echo "$c not found (Open MPI: libopenmpi-dev openmpi-bin; UCX: ucx-utils)" >&2; exit 1; }
done
venv=${FF_TF_VENV:-/opt/fftf}
if [ "$tf" = auto ]; then
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import horovod.tensorflow' 2>/dev/null; then tf=1; else tf=0; fi
    [ $tf = 1 ] || echo "== no TF venv at $venv (examples/tensorflow/setup.sh): part 2 skipped" >&2
elif [ "$tf" = 1 ]; then
    "$venv/bin/python" -c 'import horovod.tensorflow' 2>/dev/null \
        || { echo "--tf: no TF + Horovod venv at $venv: run examples/tensorflow/setup.sh" >&2; exit 1; }
fi
[ -n "$out" ] || out="$top/bench/results/allreduce-hosts-$(date +%Y-%m-%d)"
mkdir -p "$out"
csv="$out/results.csv"
echo "suite,transport,test,size_bytes,value,unit" > "$csv"

. "$here/twohosts.sh"
trap twohosts_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mode=0  # the routers' links: 0 sealed, 1 in clear
# --pin: each router on its host's CPU (bench/twohosts.sh), each rank
# (rank N runs in host N's pod) on the same CPU.
pinned=()
if [ $pin = 1 ]; then
    twohosts_cpus=(0 1)
    pinned=(bash -c 'exec taskset -c "$OMPI_COMM_WORLD_RANK" "$0" "$@"')
fi
twohosts_up "$bin" $mode

mpicc -O2 -o "$work/allreduce" "$here/mpi/allreduce.c"

# One pod on each host; ffrsh finds them through $work/rsh/NAME.pid.
mkdir -p "$work/rsh"
names=("${twohosts_prefix}-ar0" "${twohosts_prefix}-ar1")
for i in 0 1; do
    ns=$([ $i = 0 ] && echo "$ns0" || echo "$ns1")
    "$top/tools/ffcontainer" run --name "${names[$i]}" --ip "10.7$((i + 1)).0.$((11 + i))/24" --bridge ffbr \
        --host-netns "$ns" --socket-dir "$work/h$i/bench" --pidfile "$work/rsh/${names[$i]}.pid" -- sleep 86400 &
    twohosts_pods+=($!)
done
for n in "${names[@]}"; do
    for _ in $(seq 400); do [ -s "$work/rsh/$n.pid" ] && break; sleep 0.05; done
    [ -s "$work/rsh/$n.pid" ] || { echo "pod $n did not start" >&2; exit 1; }
done
printf '%s slots=1\n' "${names[@]}" > "$work/hosts"

hz=$(getconf CLK_TCK)
val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; }
busy() { awk -v hz="$hz" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }
# routers_cpu: CPU seconds of the routers running now, into $rcpu.
routers_cpu() {
    local r=0 p
    for p in "$r0" "$r1"; do
        r=$((r + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    rcpu=$(awk -v r="$r" -v hz="$hz" 'BEGIN { printf "%.2f", r / hz }')
}
# wait_quiet: wait (up to 60 s) until the machine is idle (under 0.25 of a
# core busy over a second) so that runs do not start under someone else's
# load; counts the waits that ran out in $noisy_starts.
noisy_starts=0
wait_quiet() {
    local a b
    for _ in $(seq 60); do
        a=$(busy); sleep 1; b=$(busy)
        awk -v a="$a" -v b="$b" 'BEGIN { exit !(b - a < 0.25) }' && return 0
    done
    noisy_starts=$((noisy_starts + 1))
    echo "   (the machine stayed busy for 60 s: starting anyway)" >&2
}
# measure start|end: over a run, the machine's busy CPU ($run_cpu), the
# benchmark's own CPU ($run_own: the job and everything it started, counted
# by bench/subreap.py, plus the routers), what other programs took
# ($run_foreign: the difference) and the wall time ($run_wall).
measure() {
    routers_cpu
    if [ "$1" = start ]; then
        rm -f "$work/rusage"
        m_busy=$(busy) m_r=$rcpu m_wall=$(date +%s.%N)
    else
        local b w j
        b=$(busy) w=$(date +%s.%N)
        j=$(cat "$work/rusage" 2>/dev/null || echo 0)
        run_cpu=$(awk -v a="$m_busy" -v b="$b" 'BEGIN { printf "%.2f", b - a }')
        run_own=$(awk -v a="$m_r" -v b="$rcpu" -v j="$j" 'BEGIN { printf "%.2f", b - a + j }')
        run_foreign=$(awk -v c="$run_cpu" -v o="$run_own" 'BEGIN { f = c - o; printf "%.2f", f < 0 ? 0 : f }')
        run_wall=$(awk -v a="$m_wall" -v b="$w" 'BEGIN { printf "%.2f", b - a }')
    fi
}

# mpi TRANSPORT TIMEOUT CMD...: one 2-rank job, a rank in each pod; prints
# its output (stdout and stderr). Fails, showing the end of the output, if it fails, times
# out or if UCX's lanes to the other rank are not TRANSPORT's.
mpi() {
    local t=$1 limit=$2 extra o rc lanes want v
    shift 2
    case "$t" in
        ff|ff-clear|ff+*|ff-clear+*)
            extra=(-x UCX_TLS=ff,self -x "LD_PRELOAD=$lib" "${ff_env[@]}"); want="ff/router"
            if [ "${t#*+}" != "$t" ]; then
                local kv
                IFS=+ read -ra kv <<< "${t#*+}"
                for v in "${kv[@]}"; do extra+=(-x "$v"); done
            fi ;;
        tcp,self) extra=(-x UCX_TLS=tcp,self -x UCX_NET_DEVICES=eth0); want="tcp/eth0" ;;
    esac

    rc=0
    o=$(cd "$work" && FFRSH_DIR="$work/rsh" /usr/bin/python3 "$here/subreap.py" "$work/rusage" \
        timeout -k 10 "$limit" ip netns exec "$ns0" \
        mpirun --allow-run-as-root -np 2 --hostfile "$work/hosts" \
        --mca plm_rsh_agent "$top/tools/ffrsh" --mca oob_tcp_if_include 10.0.0.0/8 \
        --mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any --mca btl self --bind-to none \
        -x UCX_LOG_LEVEL=info -x TF_CPP_MIN_LOG_LEVEL=2 "${extra[@]}" "$@" 2>&1) || rc=$?
    [ -z "${FF_ALLREDUCE_LOG:-}" ] || echo "$o" >> "$FF_ALLREDUCE_LOG"
    echo "$o" > "$work/last.log"
    if [ $rc != 0 ]; then
        echo "$o" | grep -v 'UCX  \(INFO\|DIAG\)' | tail -40 >&2
        [ $rc = 124 ] || [ $rc = 137 ] && echo "mpirun over $t did not finish in $limit s" >&2
        echo "mpirun over $t failed (exit $rc)" >&2
        return 1
    fi
    # Lanes of the endpoints to the other rank (not self): all TRANSPORT's.
    lanes=$(echo "$o" | grep 'ep_cfg\[' | grep -v 'self/' | grep -o '[a-z_]*([a-z]*/[a-z0-9]*)' | sort -u | tr '\n' ' ')
    # UCX 1.13's new protocols (UCX_PROTO_ENABLE=y) log no lanes; UCX_TLS
    # then is the only guard (it allows no other transport between ranks).
    if [ -z "$lanes" ] && echo "$o" | grep -q 'UCX_\* env variables:.*UCX_PROTO_ENABLE=y'; then
        lanes="(not logged with UCX_PROTO_ENABLE=y)"
    elif [ -z "$lanes" ] || [ -n "$(echo "$lanes" | tr ' ' '\n' | grep -v "($want)" | grep -v '^$' || true)" ]; then
        echo "$o" | grep 'ep_cfg\[' >&2 || true
        echo "mpirun over $t: lanes to the other rank are '$lanes', want only $want" >&2
        exit 1
    fi
    echo "$o"
    echo "LANES $lanes"
}

# routers_for TRANSPORT: restart the routers if TRANSPORT needs their links
# sealed (ff) or in clear (ff-clear) and they are not. In this shell, not
# in a $(...) subshell.
routers_for() {
    local m=$mode
    case "$1" in ff|ff+*) m=0 ;; ff-clear|ff-clear+*) m=1 ;; esac
    if [ "$m" != "$mode" ]; then
        mode=$m
        twohosts_routers $mode
    fi
}

# job TRANSPORT LIMIT CMD...: routers as TRANSPORT needs, a quiet machine,
# then the job (mpi); sets $jout (its output) and measure's $run_*. A run
# during which other programs took more than a tenth of the benchmark's
# own CPU is run again (3 times at most; then it is kept and counted).
# A job that fails (a crash, a timeout) returns 1 after saving its output
# to DIR/failed-N-TRANSPORT.log; the run goes on and exits 1 at the end.
reruns=0 disturbed=0 nfail=0
job() {
    local try
    for try in 1 2 3 4; do
        routers_for "$1"
        wait_quiet
        measure start
        if ! jout=$(mpi "$@"); then
            nfail=$((nfail + 1))
            cp "$work/last.log" "$out/failed-$nfail-$(echo "$1" | tr -c 'A-Za-z0-9_=.+\n-' '_').log"
            echo "   (run $nfail failed: its output is in $out/failed-$nfail-*.log; going on)" >&2
            return 1
        fi
        measure end
        awk -v f="$run_foreign" -v o="$run_own" 'BEGIN { exit !(f <= 0.1 * o) }' && return 0
        if [ $try = 4 ]; then
            disturbed=$((disturbed + 1))
            echo "   (other programs took $run_foreign s of CPU during the run, the benchmark $run_own s: kept)" >&2
        else
            reruns=$((reruns + 1))
            echo "   (other programs took $run_foreign s of CPU during the run, the benchmark $run_own s: again)" >&2
        fi
    done
}

order() { # order ROUND: the transports, rotated by ROUND - 1
    local a=($transports) i n
    n=${#a[@]}
    for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + $1 - 1) % n))]}"; done
}

bytes=$((count * 4))
[ $part1 = 1 ] || rounds=0
[ $part1 = 0 ] || echo "== part 1: MPI_Allreduce of $count floats ($bytes B), $iters iterations, $rounds round(s)" >&2
for round in $(seq "$rounds"); do
    for t in $(order "$round"); do
        if ! job "$t" 120 ${pinned[@]+"${pinned[@]}"} "$work/allreduce" "$count" "$iters" 3; then
            echo "allreduce,\"$t\",failed_runs,0,1,count" >> "$csv"
            continue
        fi
        r=$(echo "$jout" | grep '^RESULT') || { echo "$jout" | tail -20 >&2; echo "no RESULT line from bench/mpi/allreduce.c over $t" >&2; exit 1; }
        echo "   round $round $t: $(echo "$r" | cut -d' ' -f6-) | run: cpu_s=$run_cpu own_cpu_s=$run_own foreign_cpu_s=$run_foreign wall_s=$run_wall | lanes $(echo "$jout" | sed -n 's/^LANES //p')" >&2
        {
            echo "allreduce,\"$t\",allreduce,$bytes,$(echo "$r" | val ms_median),ms"
            echo "allreduce,\"$t\",allreduce_mean,$bytes,$(echo "$r" | val ms_mean),ms"
            echo "allreduce,\"$t\",cpu_ms_per_op,$bytes,$(echo "$r" | val cpu_ms_per_op),ms"
            echo "allreduce,\"$t\",run_cpu_s,0,$run_cpu,s"
            echo "allreduce,\"$t\",run_foreign_cpu_s,0,$run_foreign,s"
            echo "allreduce,\"$t\",run_wall_s,0,$run_wall,s"
        } >> "$csv"
    done
done

if [ $tf = 1 ]; then
    echo "== part 2: examples/tensorflow/train.py, $tf_steps steps, $tf_rounds round(s)" >&2
    for round in $(seq "$tf_rounds"); do
        for t in $(order "$round"); do
            if ! job "$t" 300 -x FF_EXAMPLE_LABEL="$t" ${pinned[@]+"${pinned[@]}"} "$venv/bin/python" "$top/examples/tensorflow/train.py" --steps "$tf_steps"; then
                echo "tf,\"$t\",failed_runs,0,1,count" >> "$csv"
                continue
            fi
            r=$(echo "$jout" | grep '^RESULT') || { echo "$jout" | tail -20 >&2; echo "no RESULT line from train.py over $t" >&2; exit 1; }
            echo "   round $round $t: $(echo "$r" | cut -d' ' -f3-) | run: cpu_s=$run_cpu own_cpu_s=$run_own foreign_cpu_s=$run_foreign wall_s=$run_wall" >&2
            mb=$(echo "$r" | val allreduce_mb)
            {
                echo "tf,\"$t\",images_per_s,0,$(echo "$r" | val images_per_sec),images/s"
                echo "tf,\"$t\",loss_first,0,$(echo "$r" | val loss_first),loss"
                echo "tf,\"$t\",loss_last,0,$(echo "$r" | val loss_last),loss"
                echo "tf,\"$t\",allreduce,$(awk -v m="$mb" 'BEGIN { printf "%d", m * 1e6 }'),$(echo "$r" | val allreduce_ms),ms"
                echo "tf,\"$t\",run_cpu_s,0,$run_cpu,s"
                echo "tf,\"$t\",run_foreign_cpu_s,0,$run_foreign,s"
                echo "tf,\"$t\",run_wall_s,0,$run_wall,s"
            } >> "$csv"
        done
    done
fi

{
    echo "# Allreduce across two hosts: Open MPI over ff vs UCX tcp, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); load average before the run: $load_before"
    echo "- two emulated hosts (network namespaces) on this machine, joined by a veth; a router on each, TCP link between them (sealed with a peer secret for ff, in clear for ff-clear)"
    echo "- one pod (tools/ffcontainer) per host, one rank per pod; mpirun in host 0's namespace, ranks started through tools/ffrsh; --bind-to none"
    if [ $pin = 1 ]; then echo "- pinned (--pin): host 0's router and rank on CPU 0, host 1's on CPU 1"; else echo "- not pinned: both hosts' routers and ranks on any CPU"; fi
    echo "- ffrouter $("$bin/ffrouter" --version | cut -d' ' -f2) (commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)$([ -z "$(git -C "$top" status --porcelain --untracked-files=no 2>/dev/null)" ] || echo ', with uncommitted changes')), $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- UCX $(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p'), $(mpirun --version 2>/dev/null | head -1)$([ $tf = 1 ] && echo ", TensorFlow $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null), Horovod $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("horovod"))' 2>/dev/null)")"
    echo "- command: bench/allreduce_hosts.sh $cmdline"
    [ $nfail = 0 ] || echo "- **$nfail run(s) failed** (left out of the medians; their output: $(cd "$out" && ls failed-*.log | tr '\n' ' '))"
    echo "- each run started once the machine had been idle for a second (waited up to 60 s; $noisy_starts run(s) started on a busy machine); \"other programs' CPU\" is the machine's busy CPU over a run minus the benchmark's own (the job's processes and the routers); a run during which other programs took more than a tenth of the benchmark's CPU was run again: $reruns rerun(s), $disturbed run(s) kept disturbed after 3 reruns"
    echo
    /usr/bin/python3 "$here/allreduce_report.py" "$csv"
    echo
    echo "![time per allreduce](plot-time.png)"
    echo
    /usr/bin/python3 "$here/plot.py" "$csv" "$out/plot"
} > "$out/README.md.new"
mv "$out/README.md.new" "$out/README.md"
sed -n '/^## All results/q;p' "$out/README.md"
echo "results: $out" >&2
[ $nfail = 0 ] || { echo "$nfail run(s) failed: see $out/failed-*.log" >&2; exit 1; }
