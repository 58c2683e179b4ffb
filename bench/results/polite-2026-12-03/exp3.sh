#!/bin/bash
# exp.sh REPS "SIZE ITERS" ... : two hosts, ffbench stream per variant (env VARIANTS="name:ENV=V,ENV2=V;name2:...")
set -euo pipefail
top=/work/main; here=$top/bench; bin=${BIN:-$top/target/release}
. "$here/twohosts.sh"
trap twohosts_down EXIT
insecure=${INSECURE:-0}
twohosts_up "$bin" "$insecure"
echo 0 > "$work/seq"
next_id() { local n=$(( $(cat "$work/seq") + 1 )); echo "$n" > "$work/seq"; echo "$n"; }
ctr() { local h=$1 id=$2; shift 2; local ns; ns=$([ "$h" = 0 ] && echo "$ns0" || echo "$ns1")
  "$top/tools/ffcontainer" run --name "ffm$$-$id" --ip "10.7$((h + 1)).0.$((100 + id % 150))/24" \
   --bridge ffbr --host-netns "$ns" --socket-dir "$work/h$h/bench" -- ${CLIENT_ENV:-} "$bin/ffbench" "$@"; }
pair() { local a b; a=$(next_id); b=$(next_id); local sout="$work/srv.$a.out"
  ctr 0 "$a" serve "$@" > "$sout" & local spid=$!; local h=""
  for _ in $(seq 400); do h=$(sed -n 's/^HANDLE //p' "$sout" 2>/dev/null | head -1); [ -n "$h" ] && break; sleep 0.05; done
  ctr 1 "$b" connect "$@" --handle "$h" | grep '^RESULT'; wait "$spid"; }
reps=$1; shift; specs=("$@")
loaders=()
if [ -n "${LOAD:-}" ]; then for _ in $(seq $(nproc)); do (while :; do :; done) & loaders+=($!); done; trap 'kill ${loaders[@]}; twohosts_down' EXIT; fi
IFS=';' read -ra vs <<< "${VARIANTS:-base:}"
for rep in $(seq $reps); do
 for v in "${vs[@]}"; do
  name=${v%%:*}; envs=${v#*:}
  IFS=','; set -f; evs=($envs); set +f; IFS=$' \t\n'
  for e in "${evs[@]}"; do [ -n "$e" ] && export "$e"; done
  twohosts_router_flags=(--nice ${NICE_OF_VARIANT:-0})
  twohosts_routers "$insecure" >/dev/null 2>&1
  for spec in "${specs[@]}"; do set -- $spec
      if [ "$1" = lat ]; then r=$(pair pingpong --size 8 --iters "$2"); echo "$rep $name lat $(echo "$r" | grep -o "half_rtt_us_p50=[0-9.]* half_rtt_us_mean=[0-9.]*")"
      else r=$(pair stream --size "$1" --iters "$2" --window 32)
      echo "$rep $name $1 $(echo "$r" | sed -n 's/.* mb_per_s=\([0-9.]*\).*/\1/p') cpu/gb=$(echo "$r" | sed -n 's/.* cpu_s_per_gb=\([0-9.]*\).*/\1/p')"; fi
  done
  for e in "${evs[@]}"; do [ -n "$e" ] && unset "${e%%=*}"; done
 done
done
