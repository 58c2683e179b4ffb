#!/usr/bin/python3
"""Checks a results.csv (from bench/run.sh) against the issue targets.

Prints a markdown table: target, measured, verdict. Exit status is 0 even
when a target is missed: this is a report, not a test.
"""
import csv
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows[(r["transport"], r["test"], int(r["size_bytes"]))] = float(r["value"])
    return rows


def main():
    rows = load(sys.argv[1])
    ff, cma, tcp = "ff", "posix,cma,self", "tcp,self"

    def get(t, test, size):
        return rows.get((t, test, size))

    checks = []

    def ratio(name, a, b, want, at_least=True):
        if a is None or b is None:
            checks.append((name, "missing", "n/a"))
            return
        r = a / b
        verdict = "" if want is None else ("PASS" if (r >= want if at_least else r <= want) else "FAIL")
        checks.append((name, f"{r:.2f}x ({a:,.0f} vs {b:,.0f})", verdict))

    ratio("ff 4 MiB stream >= 0.9x posix,cma,self", get(ff, "tag_bw", 4 << 20), get(cma, "tag_bw", 4 << 20), 0.9)
    ratio("ff 4 MiB stream >= 2x tcp over veth", get(ff, "tag_bw", 4 << 20), get(tcp, "tag_bw", 4 << 20), 2.0)
    for size in (65536, 1 << 20):
        ratio(f"ff {size // 1024} KiB stream vs posix,cma,self (info)", get(ff, "tag_bw", size), get(cma, "tag_bw", size), None)
        ratio(f"ff {size // 1024} KiB stream vs tcp over veth (info)", get(ff, "tag_bw", size), get(tcp, "tag_bw", size), None)
    lat = get(ff, "tag_lat", 8)
    if lat is not None:
        checks.append(("ff 8 B half round trip <= 1.0 us", f"{lat:.3f} us", "PASS" if lat <= 1.0 else "FAIL"))
        for t in (cma, tcp):
            if get(t, "tag_lat", 8):
                checks.append((f"  vs {t} (info)", f"{lat / get(t, 'tag_lat', 8):.2f}x ({get(t, 'tag_lat', 8):.3f} us)", ""))
    cpu = get(ff, "router_idle_cpu", 0)
    if cpu is not None:
        checks.append(("router, 2 idle clients, 10 s < 2% of a core", f"{cpu:.3f} %", "PASS" if cpu < 2 else "FAIL"))
    print("| target | measured | verdict |")
    print("|---|---|---|")
    for c in checks:
        print(f"| {c[0]} | {c[1]} | {c[2]} |")


if __name__ == "__main__":
    main()
