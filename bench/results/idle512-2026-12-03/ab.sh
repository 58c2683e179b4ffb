#!/bin/bash
# ab.sh OUT: main (new) and the nap backoff (fix) alternating, 3 rounds of
# series.sh each; under the heavy lock.
o=$1; cd "$(dirname "$0")"
for i in 1 2 3; do for b in new fix; do
  flock /tmp/ff-heavy.lock ./series.sh $b $o/r$i 2>/dev/null
done; done
