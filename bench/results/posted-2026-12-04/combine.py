#!/usr/bin/env python3
"""Joins the alternating before/after runs here (allreduce-*-N, tf-*-N:
bench/allreduce_hosts.sh, one round each) into ab.csv for
bench/ab_report.py: variant = before/after, suite = suite-transport, and
each run's ratio of ff to tcp (value / tcp's, same run) as suite ratio."""
import csv, glob, os, re
here = os.path.dirname(os.path.abspath(__file__))
out = csv.writer(open(os.path.join(here, "ab.csv"), "w", newline=""))
out.writerow(["variant", "suite", "test", "size_bytes", "value", "unit"])
def order(d):
    kind, variant, n = os.path.basename(d).rsplit("-", 2)
    return (kind, variant != "before", int(n))
for d in sorted(glob.glob(os.path.join(here, "*-*-[0-9]")), key=order):
    m = re.match(r"(allreduce|tf)-(before|after)-\d+$", os.path.basename(d))
    if not m:
        continue
    rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
    tcp = {(r["test"], r["size_bytes"]): float(r["value"]) for r in rows if r["transport"] == "tcp,self"}
    for r in rows:
        t = "tcp" if r["transport"] == "tcp,self" else r["transport"]
        out.writerow([m.group(2), f"{r['suite']}-{t}", r["test"], r["size_bytes"], r["value"], r["unit"]])
        b = tcp.get((r["test"], r["size_bytes"]))
        if t != "tcp" and b:
            out.writerow([m.group(2), f"{r['suite']}-ratio", r["test"], r["size_bytes"], f"{float(r['value']) / b:.4f}", "x tcp"])
