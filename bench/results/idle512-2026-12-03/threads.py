#!/usr/bin/env python3
"""threads.py DIR BUILD: per thread name (pump-0 etc. grouped by name), CPU %
of a core and wake-ups (voluntary context switches) per second over the
window between BUILD.threads0 and BUILD.threads1, both routers summed."""
import sys, os, collections, re
d, b = sys.argv[1], sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
def load(f):
    r = {}
    for line in open(os.path.join(d, f)):
        p, t, name, ticks, v, nv = line.split()
        r[(p, t)] = (name, int(ticks), int(v), int(nv))
    return r
a, z = load(b + ".threads0"), load(b + ".threads1")
secs = float(open(os.path.join(d, b + ".t1")).read()) - float(open(os.path.join(d, b + ".t0")).read())
g = collections.defaultdict(lambda: [0, 0, 0, 0])
for k, (name, t1, v1, n1) in z.items():
    if k not in a: continue
    _, t0, v0, n0 = a[k]
    key = re.sub(r"\d+$", "N", name)
    e = g[key]; e[0] += 1; e[1] += t1 - t0; e[2] += v1 - v0; e[3] += n1 - n0
tot = [0, 0, 0, 0]
print(f"{b}: {secs:.1f} s window, both routers")
print(f"{'threads':<16}{'n':>4}{'%core':>8}{'wakeups/s':>11}{'invol/s':>9}")
for k, e in sorted(g.items(), key=lambda x: -x[1][2]):
    print(f"{k:<16}{e[0]:>4}{100*e[1]/hz/secs:>8.2f}{e[2]/secs:>11.1f}{e[3]/secs:>9.1f}")
    for i in range(4): tot[i] += e[i]
print(f"{'total':<16}{tot[0]:>4}{100*tot[1]/hz/secs:>8.2f}{tot[2]/secs:>11.1f}{tot[3]/secs:>9.1f}")
