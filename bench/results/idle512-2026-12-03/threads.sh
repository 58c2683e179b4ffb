#!/bin/bash
# threads.sh PID... : one line per thread: pid tid name ns-on-cpu(schedstat) voluntary nonvoluntary
for p in "$@"; do
  for t in /proc/$p/task/*; do
    name=$(sed -n 's/^Name:\s*//p' $t/status)
    read ns _ < $t/schedstat
    v=$(sed -n 's/^voluntary_ctxt_switches:\s*//p' $t/status)
    nv=$(sed -n 's/^nonvoluntary_ctxt_switches:\s*//p' $t/status)
    echo "$p ${t##*/} $name $ns $v $nv"
  done
done
