#!/usr/bin/python3
"""Table and plot of bench/scale.sh results, one or more runs side by side.

Usage: /usr/bin/python3 bench/scale_report.py OUT.png LABEL=results.csv [LABEL=results.csv ...]

Prints a markdown table per run (rows: placement and N; columns: router
threads, RSS, shared memory, idle CPU, bandwidth, fairness, connect
latency) and writes OUT.png: four panels against N (router threads, idle
CPU of both routers, aggregate bandwidth with Jain's fairness, connect
latency p99 while all others stream), one line per run and placement.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after use("Agg"))


def read(path):
    d = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            try:
                d[(r["placement"], r["metric"], int(r["conns"]))] = float(r["value"])
            except ValueError:
                pass
    return d


def fmt(v, digits=1):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(label, d):
    print(f"### {label}\n")
    print("| placement | N | router threads (h0 / h1) | router RSS MiB (h0 / h1) | shared memory committed MiB, streaming / idle after (idle per conn KiB) | routers' idle CPU %core | aggregate MB/s | Jain | connect p50 / p99 ms | connect under load p50 / p99 ms |")
    print("|---|---:|---|---|---|---:|---:|---:|---|---|")
    keys = sorted({(p, n) for (p, _, n) in d}, key=lambda k: (k[0] != "across", k[1]))
    for p, n in keys:
        g = lambda m: d.get((p, m, n))  # noqa: E731
        shm = g("shmem_committed")
        busy = g("shmem_committed_busy")
        per = None if shm is None else shm / max(n, 1)
        rss = [g("rss_router0"), g("rss_router1")]
        print(
            f"| {p} | {n} | {fmt(g('threads_router0'), 0)} / {fmt(g('threads_router1'), 0)} "
            f"| {fmt(None if rss[0] is None else rss[0] / 1024)} / {fmt(None if rss[1] is None else rss[1] / 1024)} "
            f"| {fmt(None if busy is None else busy / 1024)} / {fmt(None if shm is None else shm / 1024)} ({fmt(per, 0)}) "
            f"| {fmt(g('routers_idle_cpu'), 2)} | {fmt(g('agg_mb_per_s'))} | {fmt(g('jain'), 3)} "
            f"| {fmt(g('connect_ms_p50'), 2)} / {fmt(g('connect_ms_p99'), 2)} "
            f"| {fmt(g('busy_connect_ms_p50'), 2)} / {fmt(g('busy_connect_ms_p99'), 2)} |"
        )
    print()


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    runs = []
    for a in sys.argv[2:]:
        label, path = a.split("=", 1)
        runs.append((label, read(path)))
    for label, d in runs:
        table(label, d)
    panels = [
        ("router threads (host 0)", "threads_router0", "threads"),
        ("both routers' CPU, all idle", "routers_idle_cpu", "% of a core"),
        ("aggregate bandwidth, all streaming", "agg_mb_per_s", "MB/s"),
        ("connect p99 while all stream", "busy_connect_ms_p99", "ms"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, metric, unit) in zip(axes.flat, panels):
        for label, d in runs:
            for p in ("across", "local"):
                pts = sorted((n, v) for (pp, m, n), v in d.items() if pp == p and m == metric)
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{label} {p}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("connections N")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"![scale]({out.rsplit('/', 1)[-1]})")


if __name__ == "__main__":
    main()
