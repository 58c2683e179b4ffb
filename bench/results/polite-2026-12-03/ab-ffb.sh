#!/bin/bash
# ab-ffb.sh ROUNDS: ffbench pingpong p50 and 64 KiB / 1 MiB stream, old vs new binaries, unloaded and beside busy loops
for r in $(seq $1); do for load in "" 1; do for v in old new; do
  LOAD=$load BIN=/work/bin-$v bash /work/runs/exp2.sh 1 "lat 5000" "65536 3000" "1048576 400" 2>/dev/null | sed "s/^/$r load=${load:-0} $v /"
done; done; done
