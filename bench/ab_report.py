#!/usr/bin/env python3
"""bench/ab_report.py CSV PNG: the table of bench/ab.sh (medians per
variant, ratio to the first variant) on stdout, and a bar plot of those
ratios (one bar per variant and test) to PNG."""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
order, vals = [], {}
for r in rows:
    if r["variant"] not in order:
        order.append(r["variant"])
    key = (r["suite"], r["test"], int(r["size_bytes"]), r["unit"])
    vals.setdefault(key, {}).setdefault(r["variant"], []).append(float(r["value"]))
rounds = max(len(x) for v in vals.values() for x in v.values())
print(f"Medians of {rounds} rounds (variants alternate within each round); ratio to {order[0]}.")
print()
print("| suite | test | size | unit | " + " | ".join(order) + " |")
print("|---|---|---:|---|" + "---:|" * len(order))
ratios = {}
for key in sorted(vals):
    suite, test, size, unit = key
    med = {v: statistics.median(x) for v, x in vals[key].items()}
    base = med.get(order[0])
    cells = []
    for v in order:
        if v not in med:
            cells.append("")
        elif v == order[0] or not base:
            cells.append(f"{med[v]:,.3g}")
        else:
            cells.append(f"{med[v]:,.3g} ({med[v] / base:.2f}x)")
            ratios.setdefault(key, {})[v] = med[v] / base
    print(f"| {suite} | {test} | {size} | {unit} | " + " | ".join(cells) + " |")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
keys = [k for k in sorted(ratios) if k[1] in ("tag_bw", "tag_lat")]
labels = [f"{s} {'lat' if t == 'tag_lat' else 'bw'} {n if n < 1024 else str(n // 1024) + 'K'}" for s, t, n, _ in keys]
fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.8), 4))
width = 0.8 / max(1, len(order) - 1)
for i, v in enumerate(order[1:]):
    ax.bar([x + i * width for x in range(len(keys))], [ratios[k].get(v, 0) for k in keys], width, label=v)
ax.axhline(1.0, color="black", linewidth=0.8)
ax.set_xticks([x + width * (len(order) - 2) / 2 for x in range(len(keys))])
ax.set_xticklabels(labels, rotation=45, ha="right")
ax.set_ylabel(f"median / {order[0]}")
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
