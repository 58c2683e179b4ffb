#!/usr/bin/python3
"""Tables and targets of bench/allreduce_hosts.sh from its results.csv.

Usage: /usr/bin/python3 bench/allreduce_report.py RESULTS.csv

Prints markdown: part 1 (suite allreduce: MPI_Allreduce over ff and over
tcp,self), part 2 (suite tf: the TensorFlow example), each value the median
of the rounds, with ff / tcp ratios, the per-round ratios (rows in CSV order:
the n-th ff row and the n-th tcp row are one round) and the target of
issue 12 (the allreduce across hosts over ff no slower than over tcp).
"""

import csv
import statistics
import sys

FF, TCP = "ff", "tcp,self"


def load(path):
    vals = {}
    for r in csv.DictReader(open(path, newline="")):
        key = (r["suite"], r["transport"], r["test"])
        vals.setdefault(key, []).append(float(r["value"]))
    return vals


def med(vals, suite, t, test):
    v = vals.get((suite, t, test))
    return statistics.median(v) if v else None


def ratio(a, b):
    return a / b if a is not None and b else None


def f(v, d=2):
    return "-" if v is None else f"{v:,.{d}f}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    vals = load(sys.argv[1])

    ar = vals.get(("allreduce", FF, "allreduce"))
    if ar:
        n = len(ar)
        sizes = {int(r["size_bytes"]) for r in csv.DictReader(open(sys.argv[1], newline=""))
                 if r["suite"] == "allreduce" and r["test"] == "allreduce"}
        size = max(sizes)
        print(f"## MPI_Allreduce of {size / 1e6:.1f} MB ({size // 4:,} floats), 2 ranks on two hosts\n")
        print(f"Medians of {n} round(s); ff and tcp alternate within each round (bench/mpi/allreduce.c;"
              " time per allreduce: median of the timed iterations of a run, each the slower rank's).\n")
        print("| | ff | UCX tcp | ff / tcp |")
        print("|---|---:|---:|---:|")
        rows = [
            ("time per allreduce (ms, lower is better)", "allreduce", 2),
            ("mean of the iterations (ms)", "allreduce_mean", 2),
            ("machine CPU per allreduce (CPU ms, both hosts, routers, kernel)", "cpu_ms_per_op", 1),
            ("machine CPU seconds, whole mpirun (start-up included)", "run_cpu_s", 2),
            ("wall seconds, whole mpirun", "run_wall_s", 2),
        ]
        for name, test, d in rows:
            a, b = med(vals, "allreduce", FF, test), med(vals, "allreduce", TCP, test)
            print(f"| {name} | {f(a, d)} | {f(b, d)} | {f(ratio(a, b))}x |")
        a, b = med(vals, "allreduce", FF, "allreduce"), med(vals, "allreduce", TCP, "allreduce")
        if a and b:
            # Bus bandwidth as nccl-tests defines it: 2(n-1)/n * size / time, n = 2.
            print(f"| bus bandwidth (GB/s, = size / time for 2 ranks) | {size / a / 1e6:.2f} | {size / b / 1e6:.2f} | {b / a:.2f}x |")
        per = [x / y for x, y in zip(vals.get(("allreduce", FF, "allreduce"), []),
                                     vals.get(("allreduce", TCP, "allreduce"), []))]
        print()
        if per:
            print("Per-round time ratios ff / tcp: " + ", ".join(f"{x:.2f}" for x in per)
                  + f" (median {statistics.median(per):.2f}).\n")
        print("| target (issue 12) | measured | verdict |")
        print("|---|---|---|")
        if a and b:
            print(f"| 29.6 MB MPI_Allreduce across hosts over ff no slower than over tcp | "
                  f"ff takes {a / b:.2f}x tcp's time ({a:.1f} vs {b:.1f} ms) | {'PASS' if a <= b else 'FAIL'} |")
        else:
            print("| 29.6 MB MPI_Allreduce across hosts over ff no slower than over tcp | missing | n/a |")
        print()

    tf = vals.get(("tf", FF, "images_per_s"))
    if tf:
        print("## TensorFlow example (Horovod over Open MPI + UCX), one rank per host\n")
        print(f"Medians of {len(tf)} round(s); ff and tcp alternate within each round.\n")
        print("| transport | images/s | loss first -> last | gradient allreduce (ms) | machine CPU s (run) | wall s (run) |")
        print("|---|---:|---|---:|---:|---:|")
        for t, name in ((TCP, "UCX tcp"), (FF, "ff")):
            print(f"| {name} | {f(med(vals, 'tf', t, 'images_per_s'), 1)} | "
                  f"{f(med(vals, 'tf', t, 'loss_first'), 3)} -> {f(med(vals, 'tf', t, 'loss_last'), 3)} | "
                  f"{f(med(vals, 'tf', t, 'allreduce'))} | {f(med(vals, 'tf', t, 'run_cpu_s'))} | "
                  f"{f(med(vals, 'tf', t, 'run_wall_s'))} |")
        a, b = med(vals, "tf", FF, "images_per_s"), med(vals, "tf", TCP, "images_per_s")
        c, d = med(vals, "tf", FF, "allreduce"), med(vals, "tf", TCP, "allreduce")
        print(f"| ff / tcp | {f(ratio(a, b))}x | | {f(ratio(c, d))}x | | |")
        print()


if __name__ == "__main__":
    main()
