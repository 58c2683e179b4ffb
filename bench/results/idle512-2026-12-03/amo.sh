#!/bin/bash
# amo.sh OUT: UCP atomics across two hosts (the test that caught a lost
# wake-up in scale3), 3 times on this branch, under the heavy lock.
cd /work/wt-idle512; export CARGO_TARGET_DIR=/work/target-scale
o=$1; mkdir -p $o; ok=0; bad=0
for i in 1 2 3; do
  if flock /tmp/ff-heavy.lock timeout -k 5 70 nice -n 10 cargo test -q -p ucx-transport --test ucp_atomics > $o/amo-$i.log 2>&1 && grep -q "test result: ok. 2 passed" $o/amo-$i.log; then ok=$((ok+1)); else bad=$((bad+1)); fi
  echo "run $i $(date -u +%T) ok=$ok bad=$bad" >> $o/amo.txt
done
