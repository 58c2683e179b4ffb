#!/usr/bin/env python3
"""Reads the routers' ff_fair debug lines (RUST_LOG=ff_fair=debug on both
routers, their stderr in one file) from a bench/scale.sh run with one N.
Prints, for the connecting router (whose clients send), every 500 ms sample:
how many connections have their client's ring full / part full / empty and
credit left; then, over the 3 s window (6 samples) from sample START, the
per-connection rate the router took from the client rings: aggregate, Jain,
how many connections moved nothing, and per sample how many moved."""
import re, sys, collections
S = []
for l in open(sys.argv[1]):
    m = re.search(r'ff_fair\] us=(\d+) ring=(\d+)(?: workers=\[[^]]*\])?(.*)', l)
    if not m:
        continue
    t, ring, d = int(m.group(1)), int(m.group(2)), {}
    for e in m.group(3).split():
        v = list(map(int, e.split(':')))
        if len(v) == 10:  # id oh ot ih it lim charged reported asleep stream
            left = 2**64 - 1 if v[6] == 2**64 - 1 else v[5] - v[6]
            d[v[0]] = (v[1], v[2], v[3], v[4], left, v[9], -1)
        elif len(v) == 7:  # id oh ot ih it left stream
            d[v[0]] = tuple(v[1:]) + (-1,)
        else:  # id oh ot ih it left stream worker
            d[v[0]] = tuple(v[1:])
    if len(d) < 500:
        continue
    so = sum(v[0] for v in d.values()); si = sum(v[2] for v in d.values())
    if so > si:  # the connecting router: its clients' rings carry the data
        S.append((t, ring, d))
def jain(x):
    s = sum(x); q = sum(v * v for v in x)
    return s * s / len(x) / q if q else 0
for t, ring, d in S:
    c = collections.Counter()
    for v in d.values():
        occ = (v[0] - v[1]) / ring
        cred = 'locked' if v[4] == 2**64 - 1 else 'credit' if v[4] >= 65600 else 'no-credit'
        c[('full' if occ > 0.9 else 'part' if occ > 0.1 else 'empty') + '/' + cred] += 1
    print('sample %6d ms' % (t // 1000 % 1000000), dict(c.most_common(4)))
i = int(sys.argv[2]) if len(sys.argv) > 2 else 8
j = i + 6
(ta, _, a), (tb, _, b) = S[i], S[j]
dt = (tb - ta) / 1e6
ks = [k for k in a if k in b]
rate = {k: (b[k][1] - a[k][1]) / dt / 1e6 for k in ks}
x = sorted(rate.values())
print('window from sample %d: %.2f s, %d connections, taken from client rings: agg %.1f MB/s, Jain %.3f, moved nothing %d, deciles %s'
      % (i, dt, len(ks), sum(x), jain(x), sum(1 for v in x if v == 0), [round(x[int(q * (len(x) - 1))], 2) for q in (0, .1, .25, .5, .75, .9, 1)]))
for (t0, _, s0), (t1, _, s1) in zip(S[i:j], S[i + 1:j + 1]):
    print('  %6d ms: connections that moved %d' % (t1 // 1000 % 1000000, sum(1 for k in ks if s1[k][1] != s0[k][1])))
if len(sys.argv) > 3:
    top = sorted(ks, key=lambda k: -rate[k])[:20]
    print('fastest 20 (id: MB/s, stream):', [(k, round(rate[k], 2), b[k][5]) for k in top])
    by = collections.defaultdict(list)
    for k in ks:
        by[b[k][5]].append(rate[k])
    for st in sorted(by):
        print('  stream %d: %d connections, agg %.1f MB/s, Jain %.3f' % (st, len(by[st]), sum(by[st]), jain(by[st])))
    byw = collections.defaultdict(list)
    for k in ks:
        byw[b[k][6]].append(rate[k])
    for w in sorted(byw):
        print('  worker %d: %d connections, agg %.1f MB/s, Jain %.3f' % (w, len(byw[w]), sum(byw[w]), jain(byw[w])))
    print('fastest 20 (id: MB/s, stream, worker):', [(k, round(rate[k], 2), b[k][5], b[k][6]) for k in top])
    for lo in range(0, 512, 64):
        y = [rate[k] for k in ks if lo < k <= lo + 64]
        print('  ids %d-%d: agg %.1f MB/s, Jain %.3f' % (lo + 1, lo + 64, sum(y), jain(y)))
