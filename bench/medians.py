#!/usr/bin/env python3
"""Medians of a benchmark's rounds.

usage: medians.py RESULTS.csv MEDIANS.csv

RESULTS has the columns transport, test, size_bytes, value, unit (one row
per round); MEDIANS gets transport, test, size_bytes, median, min, max,
unit per group, in first-seen order, and is printed too.
"""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
groups = {}
for r in rows:
    groups.setdefault((r["transport"], r["test"], r["size_bytes"], r["unit"]), []).append(float(r["value"]))
with open(sys.argv[2], "w") as f:
    f.write("transport,test,size_bytes,median,min,max,unit\n")
    for (tl, t, s, u), v in groups.items():
        f.write(f"{tl},{t},{s},{statistics.median(v):g},{min(v):g},{max(v):g},{u}\n")
print(open(sys.argv[2]).read())
