#!/usr/bin/python3
"""Checks a results.csv from bench/ucx_bench.sh against the targets of the
UCX transport issue (ff,self between two containers vs UCX's own
posix,cma,self and tcp,self). Repeated rows are combined by their median.

Prints a markdown table: target, measured, verdict. Exit status 0 even when
a target is missed: this is a report, not a test.
"""
import csv
import statistics
import sys


def load(path):
    vals = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            vals.setdefault((r["transport"], r["test"], int(r["size_bytes"])), []).append(float(r["value"]))
    return {k: statistics.median(v) for k, v in vals.items()}


def main():
    rows = load(sys.argv[1])
    ff, cma, tcp = "ff,self", "posix,cma,self", "tcp,self"
    get = lambda t, test, size: rows.get((t, test, size))  # noqa: E731
    out = []

    def check(name, a, b, want, at_least=True, unit=""):
        if a is None or (b is None and want is not None and not unit):
            out.append((name, "missing", "n/a"))
            return
        if unit:  # absolute
            ok = a <= want if not at_least else a >= want
            out.append((name, f"{a:.3f} {unit}", "PASS" if ok else "FAIL"))
            return
        r = a / b
        ok = r >= want if at_least else r <= want
        out.append((name, f"{r:.2f}x ({a:,.3g} vs {b:,.3g})", "PASS" if ok else "FAIL"))

    lat = get(ff, "tag_lat", 8)
    check("tag_lat 8 B <= 1.0 us", lat, None, 1.0, at_least=False, unit="us")
    check("tag_lat 8 B <= 0.3x tcp,self", lat, get(tcp, "tag_lat", 8), 0.3, at_least=False)
    if lat is not None and get(cma, "tag_lat", 8):
        out.append(("  (info) vs posix,cma,self", f"{lat / get(cma, 'tag_lat', 8):.2f}x", ""))
    check("tag_bw 8 B rate >= 0.4x posix,cma,self", get(ff, "tag_bw", 8), get(cma, "tag_bw", 8), 0.4)
    check("tag_bw 64 KiB >= 0.8x posix,cma,self", get(ff, "tag_bw", 65536), get(cma, "tag_bw", 65536), 0.8)
    check("tag_bw 4 MiB >= 0.9x posix,cma,self", get(ff, "tag_bw", 4 << 20), get(cma, "tag_bw", 4 << 20), 0.9)
    for size in (65536, 1 << 20, 4 << 20):
        check(f"tag_bw {size // 1024} KiB >= 2x tcp,self", get(ff, "tag_bw", size), get(tcp, "tag_bw", size), 2.0)
    check("(info) tag_bw 1 MiB vs posix,cma,self", get(ff, "tag_bw", 1 << 20), get(cma, "tag_bw", 1 << 20), 0.0)
    print("| target (ff,self between two containers) | measured | verdict |")
    print("|---|---|---|")
    for name, m, v in out:
        print(f"| {name} | {m} | {v} |")


if __name__ == "__main__":
    main()
