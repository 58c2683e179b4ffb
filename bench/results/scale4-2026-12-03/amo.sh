#!/bin/bash
cd /work/wt-scale4; export CARGO_TARGET_DIR=/work/target-scale
ok=0; bad=0
for i in 1 2 3 4 5; do
  if timeout -k 5 70 nice -n 10 cargo test -q -p ucx-transport --test ucp_atomics > /tmp/scale4/amo-$i.log 2>&1 && grep -q "test result: ok. 2 passed" /tmp/scale4/amo-$i.log; then ok=$((ok+1)); else bad=$((bad+1)); fi
  echo "run $i $(date -u +%T) ok=$ok bad=$bad" >> /tmp/scale4/amo.txt
done
