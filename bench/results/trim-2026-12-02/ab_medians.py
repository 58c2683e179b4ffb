# Medians per variant over the ab-*/results.csv runs here (bench/ab.sh rows).
import csv, glob, statistics, collections, sys
runs = sys.argv[1:] or sorted(glob.glob("ab-*/results.csv"))
vals = collections.defaultdict(list)
for p in runs:
    for r in csv.DictReader(open(p)):
        vals[(r["suite"], r["test"], int(r["size_bytes"]), r["unit"], r["variant"])].append(float(r["value"]))
keys = sorted({k[:4] for k in vals})
print(f"runs: {', '.join(runs)}\n")
print("| suite | test | size | unit | main (rounds) | trim (rounds) | trim / main |")
print("|---|---|---:|---|---|---|---:|")
for k in keys:
    m, t = vals.get(k + ("main",), []), vals.get(k + ("trim",), [])
    if not m or not t: continue
    mm, tm = statistics.median(m), statistics.median(t)
    f = lambda xs: ", ".join(f"{x:.4g}" for x in xs)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {mm:.4g} ({f(m)}) | {tm:.4g} ({f(t)}) | {tm / mm if mm else float('nan'):.2f} |")
