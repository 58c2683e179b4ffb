#!/bin/bash
# Dumps gdb backtraces of my routers (/tmp/scale3-bin-*) when a link socket's Recv-Q stays the same nonzero value for 1 s.
out=$1; mkdir -p "$out"; prev=""; k=0
while [ ! -e "$out/stop" ]; do
  sleep 1; newprev=""
  for p in $(pgrep -x ffrouter); do
    exe=$(readlink /proc/$p/exe 2>/dev/null); case "$exe" in /tmp/scale3-bin-base/*) ;; *) continue ;; esac
    cur=$(nsenter -t $p -n ss -tnH state established 2>/dev/null | awk '$1>100000 && ($3 ~ /:7070$/ || $4 ~ /:7070$/){print $1, $3, $4}' | sort)
    while read -r q l r; do
      [ -n "$q" ] || continue
      if grep -qx "$p $q $l $r" <<<"$prev"; then
        k=$((k+1)); f="$out/stuck-$(date +%H%M%S)-$k.txt"
        echo "stuck Recv-Q in router $p ($exe): $q $l $r" > "$f"
        nsenter -t $p -n ss -tni >> "$f" 2>&1
        for q2 in $(pgrep -x ffrouter); do
          case "$(readlink /proc/$q2/exe)" in /tmp/scale3-bin-base/*) ;; *) continue ;; esac
          echo "== ffrouter $q2" >> "$f"
          timeout 30 gdb -p $q2 -batch -ex 'thread apply all bt 15' >> "$f" 2>&1
        done
        sleep 8; break
      fi
    done <<<"$cur"
    newprev+="$(sed "s/^/$p /" <<<"$cur")"$'\n'
  done
  prev=$newprev
done
