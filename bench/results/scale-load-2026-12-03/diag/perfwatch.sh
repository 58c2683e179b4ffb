#!/bin/bash
# perfwatch.sh FILE OUT: once FILE says STREAMING, 1.5 s later, perf record -a for 3 s
f=$1 out=$2
for i in $(seq 3000); do grep -q '^STREAMING' "$f" 2>/dev/null && break; sleep 0.1; done
sleep 1.5
perf record -a -F 999 -g -o "$out" -- sleep 3 > /dev/null 2>&1
