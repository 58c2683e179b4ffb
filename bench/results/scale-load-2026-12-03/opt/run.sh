#!/bin/bash
o=/tmp/scale3/follow2; cd /work/wt-scale3
log() { echo "$* $(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $o.log; }
sc() { log "$1 round $2 start"; bench/scale.sh --counts '1 512' --drivers '0 8' --only across --idle 3 --probes 10 --bin /tmp/scale3-bin-$1 --label $1-$2 --out $o/$1-$2 > $o/$1-$2.stdout 2> $o/$1-$2.stderr; log "   end"; }
sc new 2; sc opt 2
log "lat_ab start"
bench/lat_ab.sh --rounds 8 --out $o/lat_ab.csv base=/tmp/scale3-bin-base new=/tmp/scale3-bin-new opt=/tmp/scale3-bin-opt > $o/lat_ab.txt 2>&1
log "   end"
sc opt 3; sc new 3
log DONE
