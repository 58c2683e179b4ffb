#!/usr/bin/env python3
"""series.py DIR BUILD [FROM TO]: both routers' CPU (% of a core, from
schedstat) and wake-ups (voluntary switches) per second by thread group,
per second of the idle time, and over seconds FROM..TO (default 6..20)."""
import sys, os, re, collections
d, b = sys.argv[1], sys.argv[2]
lo, hi = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (6, 20)
s = os.path.join(d, b + ".s")
def load(i):
    r = {}
    for line in open(os.path.join(s, str(i))):
        p, t, name, ns, v, nv = line.split()
        r[(p, t)] = (re.sub(r"\d+$", "N", name), int(ns), int(v))
    return r, float(open(os.path.join(s, f"{i}.t")).read())
snaps = []
for i in range(100):
    try:
        x = load(i)
    except (OSError, ValueError):
        break
    if snaps and len(x[0]) < len(snaps[0][0]):
        break  # the routers were ending
    snaps.append(x)
n = len(snaps)
def diff(i, j):
    (a, ta), (z, tz) = snaps[i], snaps[j]
    g = collections.defaultdict(lambda: [0, 0])
    for k, (name, ns, v) in z.items():
        if k in a:
            g[name][0] += ns - a[k][1]; g[name][1] += v - a[k][2]
    secs = tz - ta
    return {k: (100 * e[0] / 1e9 / secs, e[1] / secs) for k, e in g.items()}, secs
names = ["pump-N", "ring-trim", "peer-rx-N", "peer-ping", "peer-ctrl"]
print(f"{b}: per second of idle time, %core (wake-ups/s)")
print("sec  " + "".join(f"{x:>18}" for x in names + ["all"]))
for i in range(n - 1):
    g, _ = diff(i, i + 1)
    tot = sum(v[0] for v in g.values()), sum(v[1] for v in g.values())
    print(f"{i:>3}  " + "".join(f"{g.get(x,(0,0))[0]:>10.2f} ({g.get(x,(0,0))[1]:>4.0f})" for x in names) + f"{tot[0]:>10.2f} ({tot[1]:>4.0f})")
g, secs = diff(lo, min(hi, n - 1))
tot = sum(v[0] for v in g.values()), sum(v[1] for v in g.values())
print(f"{lo}-{min(hi, n-1)} s ({secs:.1f} s): " + ", ".join(f"{x} {g.get(x,(0,0))[0]:.2f} % ({g.get(x,(0,0))[1]:.0f}/s)" for x in names) + f"; all {tot[0]:.2f} % ({tot[1]:.0f}/s)")
pw = g.get("pump-N", (0, 0))
if pw[1]: print(f"pump workers: {1e4 * pw[0] / pw[1]:.0f} us on CPU per wake-up")
