#!/usr/bin/python3
"""Tables and targets of bench/allreduce_hosts.sh from its results.csv.

Usage: /usr/bin/python3 bench/allreduce_report.py RESULTS.csv

Prints markdown: part 1 (suite allreduce: MPI_Allreduce over ff and over
tcp,self), part 2 (suite tf: the TensorFlow example), each value the median
of the rounds, with ff / tcp ratios, the per-round ratios (rows in CSV order:
the n-th ff row and the n-th tcp row are one round) and the target of
issue 12 (the allreduce across hosts over ff no slower than over tcp).
Transports: ff (links sealed), ff-clear (links in clear), tcp,self.
"""

import csv
import statistics
import sys

FF, CLEAR, TCP = "ff", "ff-clear", "tcp,self"
NAMES = {FF: "ff (sealed)", CLEAR: "ff (clear)", TCP: "UCX tcp"}


def tname(t):
    return NAMES.get(t, t)


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

    ar = [v for (suite, _, test), v in vals.items() if suite == "allreduce" and test == "allreduce"]
    if ar:
        n = max(len(v) for v in ar)
        sizes = {int(r["size_bytes"]) for r in csv.DictReader(open(sys.argv[1], newline=""))
                 if r["suite"] == "allreduce" and r["test"] == "allreduce"}
        size = max(sizes)
        print(f"## MPI_Allreduce of {size / 1e6:.1f} MB ({size // 4:,} floats), 2 ranks on two hosts\n")
        print(f"Medians of {n} round(s); the transports take turns within each round (bench/mpi/allreduce.c;"
              " time per allreduce: median of the timed iterations of a run, each the slower rank's;"
              " bus bandwidth as nccl-tests defines it, 2(n-1)/n x size / time = size / time for n = 2;"
              " machine CPU: every process of both hosts, the routers and the kernel, from /proc/stat,"
              " over the timed loop; whole mpirun: start-up included).\n")
        ts = [t for t in dict.fromkeys(t for (suite, t, test) in vals if suite == "allreduce" and test == "allreduce")]
        ts = sorted(ts, key=lambda t: (t == TCP, ts.index(t)))
        rs = [t for t in ts if t != TCP and TCP in ts]

        def col(t, test):
            v = vals.get(("allreduce", t, test))
            return (max(v) if test == "run_foreign_cpu_s" else statistics.median(v)) if v else None

        print("| transport | time per allreduce (ms) | vs tcp | mean (ms) | bus bandwidth (GB/s) "
              "| machine CPU per allreduce (CPU ms) | vs tcp | whole mpirun: CPU s | wall s "
              "| other programs' CPU s (max) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        m = {t: col(t, "allreduce") for t in ts}
        for t in ts:
            c, ct = col(t, "cpu_ms_per_op"), col(TCP, "cpu_ms_per_op")
            print(f"| {tname(t)} | {f(m[t])} | {f(ratio(m[t], m.get(TCP)))}x | {f(col(t, 'allreduce_mean'))} "
                  f"| {size / m[t] / 1e6:.2f} | {f(c, 1)} | {f(ratio(c, ct))}x | {f(col(t, 'run_cpu_s'))} "
                  f"| {f(col(t, 'run_wall_s'))} | {f(col(t, 'run_foreign_cpu_s'))} |")
        print()
        for t in rs:
            per = [x / y for x, y in zip(vals.get(("allreduce", t, "allreduce"), []),
                                         vals.get(("allreduce", TCP, "allreduce"), []))]
            print(f"Per-round time ratios {tname(t)} / tcp: " + ", ".join(f"{x:.2f}" for x in per)
                  + f" (median {statistics.median(per):.2f}).\n")
        for t in ts:
            nf = len(vals.get(("allreduce", t, "failed_runs"), []))
            if nf:
                print(f"**{nf} run(s) over {tname(t)} failed** (not in the medians; see failed-*.log).\n")
        a, b = m.get(FF), m.get(TCP)
        print("| target (issue 12) | measured | verdict |")
        print("|---|---|---|")
        if a and b:
            print(f"| 29.6 MB MPI_Allreduce across hosts over ff (sealed) no slower than over tcp | "
                  f"ff takes {a / b:.2f}x tcp's time ({a:.1f} vs {b:.1f} ms) | {'PASS' if a <= b else 'FAIL'} |")
        else:
            print("| 29.6 MB MPI_Allreduce across hosts over ff no slower than over tcp | missing | n/a |")
        c = m.get(CLEAR)
        if c and b:
            print(f"| (info) the same with links in clear | ff-clear takes {c / b:.2f}x tcp's time ({c:.1f} vs {b:.1f} ms) | |")
        print()

    tf = [v for (suite, _, test), v in vals.items() if suite == "tf" and test in ("images_per_s", "failed_runs")]
    if tf:
        print("## TensorFlow example (Horovod over Open MPI + UCX), one rank per host\n")
        ok = [len(v) for (suite, _, test), v in vals.items() if suite == "tf" and test == "images_per_s"]
        print(f"Medians of up to {max(ok, default=0)} successful round(s); the transports take turns within each round.\n")
        print("| transport | images/s | loss first -> last | gradient allreduce (ms) | machine CPU s (run) | wall s (run) | other programs' CPU s (max) |")
        print("|---|---:|---|---:|---:|---:|---:|")
        tts = list(dict.fromkeys(t for (suite, t, test) in vals if suite == "tf"))
        tts = sorted(tts, key=lambda t: (t != TCP, tts.index(t)))
        for t in tts:
            if not vals.get(("tf", t, "images_per_s")):
                print(f"| {tname(t)} | - | every run failed | - | - | - | - |")
                continue
            runs = f" ({len(vals[('tf', t, 'images_per_s')])} runs)"
            print(f"| {tname(t)}{runs} | {f(med(vals, 'tf', t, 'images_per_s'), 1)} | "
                  f"{f(med(vals, 'tf', t, 'loss_first'), 3)} -> {f(med(vals, 'tf', t, 'loss_last'), 3)} | "
                  f"{f(med(vals, 'tf', t, 'allreduce'))} | {f(med(vals, 'tf', t, 'run_cpu_s'))} | "
                  f"{f(med(vals, 'tf', t, 'run_wall_s'))} | {f(max(vals.get(('tf', t, 'run_foreign_cpu_s'), [0])))} |")
        for t in tts:
            if t == TCP or not vals.get(("tf", t, "images_per_s")) or not vals.get(("tf", TCP, "images_per_s")):
                continue
            a, b = med(vals, "tf", t, "images_per_s"), med(vals, "tf", TCP, "images_per_s")
            c, d = med(vals, "tf", t, "allreduce"), med(vals, "tf", TCP, "allreduce")
            print(f"| {tname(t)} / tcp | {f(ratio(a, b))}x | | {f(ratio(c, d))}x | | | |")
        print()
        for t in tts:
            nf = len(vals.get(("tf", t, "failed_runs"), []))
            if nf:
                print(f"**{nf} run(s) over {tname(t)} failed** (not in the medians; see failed-*.log).\n")


if __name__ == "__main__":
    main()
