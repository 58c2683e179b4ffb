#!/bin/bash
for r in $(seq $1); do for load in 1 ""; do
  LOAD=$load BIN=/work/bin-old bash /work/runs/exp3.sh 1 "lat 5000" "65536 3000" 2>/dev/null | sed "s/^/$r load=${load:-0} old /"
  LOAD=$load BIN=/work/target-exp/release VARIANTS="new:;norouter:FFX_NOROUTER=1" bash /work/runs/exp3.sh 1 "lat 5000" "65536 3000" 2>/dev/null | sed "s/^/$r load=${load:-0} exp /"
  LOAD=$load CLIENT_ENV="env FFX_ROW=1" BIN=/work/target-exp/release VARIANTS="row1:;row1norouter:FFX_NOROUTER=1" bash /work/runs/exp3.sh 1 "lat 5000" "65536 3000" 2>/dev/null | sed "s/^/$r load=${load:-0} exp /"
done; done
