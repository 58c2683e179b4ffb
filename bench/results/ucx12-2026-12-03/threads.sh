#!/bin/bash
# threads.sh TRANSPORT OUT BIN: per-thread CPU (from /proc, no perf) over 5 s in the middle of 300 allreduces
t=$1; out=$2; bin=$3
mkdir -p $out; cd /work/wt-ucx12
bench/allreduce_hosts.sh --transports "$t" --rounds 1 --iters 300 --no-tf --bin $bin --out $out/run > $out/run.log 2>&1 &
job=$!
for _ in $(seq 1200); do pgrep -f "allreduce 7400000 300 3" >/dev/null && break; sleep 0.1; done
sleep 3
snap() { for p in $(pgrep -x ffrouter) $(pgrep -x allreduce); do for f in /proc/$p/task/*/stat; do awk -v p=$p '{ s=$0; sub(/^[0-9]+ \(/, "", s); n=substr(s,1,index(s,")")-1); sub(/^[^)]*\) /, "", s); split(s,a," "); print p"/"$1, n, a[12]+a[13] }' $f 2>/dev/null; done; done; }
snap > $out/s0; i0=$(awk '/^cpu /{print $5+$6; exit}' /proc/stat); sleep 5; snap > $out/s1; i1=$(awk '/^cpu /{print $5+$6; exit}' /proc/stat)
wait $job
ms=$(grep -o 'ms_mean=[0-9.]*' $out/run.log | head -1 | cut -d= -f2)
echo "transport $t ms_mean $ms idle_frac $(awk -v a=$i0 -v b=$i1 'BEGIN{printf "%.2f", (b-a)/100/10}')"
join <(sort $out/s0) <(sort $out/s1) | awk -v ms=$ms '{ d=$5-$3; name=$2; sub(/-[0-9]+$/,"",name); c[name]+=d } END { for (n in c) if (c[n]>0) printf "  %-12s %6.1f ms CPU per allreduce\n", n, c[n]*10/(5000/ms) }' | sort -k2 -rn
grep "round 1" $out/run.log | cut -c1-200
