#!/usr/bin/env python3
"""Prints the rounds' aggregate (x N = 1, Jain) per placement and N, and the other columns' ranges."""
import csv, collections, sys
rounds = sys.argv[1:] or ["round-1", "round-2", "after-round-1", "after-round-2"]
v = collections.defaultdict(dict)
for r in rounds:
    for row in csv.reader(open(f"{r}/results.csv")):
        if row[0] == "scale":
            v[(row[1], int(row[3]), row[2])][r] = float(row[4])
pls = ["across", "across/drivers=8", "local", "local/drivers=8"]
print("| placement | N | " + " | ".join(rounds) + " |")
print("|---|---:|" + "---|" * len(rounds))
for pl in pls:
    for n in (1, 16, 64, 256, 512):
        cells = []
        for r in rounds:
            a = v[(pl, n, "agg_mb_per_s")].get(r)
            a1 = v[(pl, 1, "agg_mb_per_s")].get(r)
            j = v[(pl, n, "jain")].get(r)
            cells.append("-" if a is None else f"{a:,.0f} ({a / a1:.2f}x, {j:.3f})")
        print(f"| {pl} | {n} | " + " | ".join(cells) + " |")
for m in ["threads_router0", "routers_idle_cpu_settled", "busy_connect_ms_p99", "connect_ms_p99", "bad_messages"]:
    for pl in pls:
        vals = [v[(pl, 512, m)].get(r) for r in rounds]
        print(m, pl, "N=512:", vals, "N=1:", [v[(pl, 1, m)].get(r) for r in rounds])
