#!/usr/bin/python3
"""Plot and tabulate FreeFlow / UCX benchmark results.

Usage: /usr/bin/python3 bench/plot.py RESULTS.csv OUT_PREFIX

RESULTS.csv has the header  suite,transport,test,size_bytes,value,unit
(fields containing commas, such as the transport "posix,cma,self", are
CSV-quoted).  Rows of any suite are accepted.

Kinds of rows:
  bandwidth   test tag_bw, stream, all_reduce_busbw (NCCL bus bandwidth) or
              ucp_{am_bw,put_bw,get,add}, unit MB/s (10^6 B/s; GB/s, MiB/s and
              KB/s are converted)
  msg rate    the same tests, unit Mmsg/s (or msg/s)
  latency     test tag_lat, pingpong, ucp_get or ucp_fadd, unit us (or ns, ms)
  CPU         test cpu_per_gb, unit s/GB: CPU seconds of the whole machine
              per GB moved (tabulated, not plotted)
  op time     test allreduce, unit ms (or us, s): time of one collective
Other rows only appear in the table of all rows.

Writes
  OUT_PREFIX-bw.png   bandwidth vs message size (log x), one line per
                      suite/transport
  OUT_PREFIX-lat.png  bar chart of the 8 B latency per suite/transport, or
                      latency vs message size where rows have several sizes
  OUT_PREFIX-time.png bar chart of the op times (median per suite/transport
                      and size, each row a dot), only if there are such rows
A CSV with op time rows and no bandwidth (or latency) rows gets no empty
bandwidth (or latency) plot.
and prints to stdout a markdown table of all rows, then for each kind and
size the value of every suite/transport and its ratio to "posix,cma,self"
and to "tcp,self" (value / baseline; for latency > 1 means slower, for
bandwidth and rate > 1 means faster).  Repeated rows for the same
suite/transport/test/size are combined by their median.  A suite/transport
with several tests of one kind (e.g. tag_lat and pingpong) gets one series
per test, labelled "suite/transport [test]".
"""

import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after use("Agg"))

BW_TESTS = {"tag_bw", "stream", "all_reduce_busbw", "ucp_am_bw", "ucp_put_bw", "ucp_get", "ucp_add"}
LAT_TESTS = {"tag_lat", "pingpong", "ucp_get", "ucp_fadd"}
TIME_TESTS = {"allreduce"}
BASELINES = ["posix,cma,self", "tcp,self"]

# unit -> (kind, factor to the canonical unit of that kind)
BW_UNITS = {"MB/s": 1.0, "GB/s": 1000.0, "KB/s": 0.001, "MiB/s": 1.048576}
RATE_UNITS = {"Mmsg/s": 1.0, "msg/s": 1e-6, "Kmsg/s": 1e-3}
LAT_UNITS = {"us": 1.0, "µs": 1.0, "ns": 1e-3, "ms": 1e3}
TIME_UNITS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
KIND_UNIT = {"bw": "MB/s", "rate": "Mmsg/s", "lat": "us", "cpu": "s/GB", "time": "ms"}
KIND_NAME = {"bw": "bandwidth", "rate": "message rate", "lat": "latency", "cpu": "CPU per GB moved",
             "time": "op time"}


def usage():
    sys.stderr.write("usage: %s RESULTS.csv OUT_PREFIX\n" % sys.argv[0])
    sys.exit(2)


def label(suite, transport):
    return transport if suite == transport else "%s/%s" % (suite, transport)


def size_str(n):
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return "%d %s" % (n // f, unit)
    if n >= 1000000:
        return "%.1f MB" % (n / 1e6)
    return "%d B" % n


def fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 1:
        return "%.2f" % v
    return "%.3g" % v


def classify(test, unit):
    """Return (kind, factor) or None for rows we do not plot/compare."""
    if test in BW_TESTS:
        if unit in BW_UNITS:
            return "bw", BW_UNITS[unit]
        if unit in RATE_UNITS:
            return "rate", RATE_UNITS[unit]
    if test in LAT_TESTS and unit in LAT_UNITS:
        return "lat", LAT_UNITS[unit]
    if test == "cpu_per_gb" and unit == "s/GB":
        return "cpu", 1.0
    if test in TIME_TESTS and unit in TIME_UNITS:
        return "time", TIME_UNITS[unit]
    return None


def read_rows(path):
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"suite", "transport", "test", "size_bytes", "value", "unit"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            sys.exit("%s: missing header %s" % (path, ",".join(sorted(need))))
        for lineno, r in enumerate(reader, start=2):
            try:
                r["size_bytes"] = int(r["size_bytes"])
                r["value"] = float(r["value"])
            except (TypeError, ValueError):
                sys.stderr.write("%s:%d: skipping bad row %r\n" % (path, lineno, r))
                continue
            rows.append(r)
    return rows


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        usage()
    path, prefix = sys.argv[1], sys.argv[2]
    rows = read_rows(path)

    # Tests seen per (kind, suite/transport): a suite/transport that has
    # several tests of one kind (e.g. tag_lat and pingpong) gets one series
    # per test, labelled "suite/transport [test]".
    tests_seen = {}
    for r in rows:
        c = classify(r["test"], r["unit"])
        if c is not None:
            key = (c[0], label(r["suite"], r["transport"]))
            tests_seen.setdefault(key, set()).add(r["test"])

    # (kind, label, size) -> list of values in the canonical unit
    data = {}
    order = []  # labels in order of first appearance
    for r in rows:
        c = classify(r["test"], r["unit"])
        if c is None:
            continue
        kind, factor = c
        lab = label(r["suite"], r["transport"])
        if len(tests_seen[(kind, lab)]) > 1:
            lab = "%s [%s]" % (lab, r["test"])
        if lab not in order:
            order.append(lab)
        data.setdefault((kind, lab, r["size_bytes"]), []).append(r["value"] * factor)
    val = {k: statistics.median(v) for k, v in data.items()}

    has = {k for (k, _, _) in data}
    has_time = "time" in has

    # ---- op time plot: one bar per suite/transport and size, rows as dots
    if has_time:
        bars = sorted({(s, lab) for (k, lab, s) in data if k == "time"}, key=lambda x: (x[0], order.index(x[1])))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, key in enumerate(bars):
            v = val[("time",) + key[::-1]]
            b = ax.bar(i, v, color="C%d" % (order.index(key[1]) % 10))[0]
            pts = data[("time",) + key[::-1]]
            ax.plot([i] * len(pts), pts, "k.", alpha=0.6)
            ax.annotate(fmt(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(["%s\n%s" % (lab, size_str(s)) for s, lab in bars], fontsize=8)
        ax.set_ylabel("time per op (ms; bar: median, dots: rows)")
        ax.set_title("Time per collective (lower is better)")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(prefix + "-time.png", dpi=120)
        plt.close(fig)

    # ---- bandwidth plot
    if "bw" in has or not has_time:
        plot_bw(prefix, val, order)
    if "lat" in has or not has_time:
        plot_lat(prefix, val, order)
    tables(rows, val, order)


def plot_bw(prefix, val, order):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes_bw = sorted({s for (k, _, s) in val if k == "bw"})
    for lab in order:
        pts = sorted((s, v) for (k, l, s), v in val.items() if k == "bw" and l == lab)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
    ax.set_xscale("log", base=2)
    if sizes_bw:
        ax.set_xticks(sizes_bw)
        ax.set_xticklabels([size_str(s) for s in sizes_bw])
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no bandwidth rows", ha="center", transform=ax.transAxes)
    ax.set_xlabel("message size")
    ax.set_ylabel("bandwidth (MB/s, 10^6 B/s)")
    ax.set_title("Bandwidth vs message size")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(prefix + "-bw.png", dpi=120)
    plt.close(fig)



def plot_lat(prefix, val, order):
    sizes = sorted({s for (k, _, s) in val if k == "lat"})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(sizes) > 1:
        # Several sizes: latency against size, one line per suite/transport.
        for lab in order:
            pts = sorted((s, v) for (k, l, s), v in val.items() if k == "lat" and l == lab)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_str(s) for s in sizes])
        ax.set_xlabel("message size")
        ax.legend()
        ax.set_title("Latency (tag_lat / pingpong, lower is better)")
        ax.grid(True, alpha=0.3)
    else:
        lat = [(lab, val[("lat", lab, 8)]) for lab in order if ("lat", lab, 8) in val]
        if lat:
            bars = ax.bar(range(len(lat)), [v for _, v in lat])
            ax.set_xticks(range(len(lat)))
            ax.set_xticklabels([lab for lab, _ in lat], rotation=15)
            for b, (_, v) in zip(bars, lat):
                ax.annotate(fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom")
        else:
            ax.text(0.5, 0.5, "no 8 B latency rows", ha="center", transform=ax.transAxes)
        ax.set_title("8 B latency (tag_lat / pingpong)")
        ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylabel("latency (us)")
    fig.tight_layout()
    fig.savefig(prefix + "-lat.png", dpi=120)
    plt.close(fig)


def tables(rows, val, order):
    print("## All results\n")
    print("| suite | transport | test | size | value | unit |")
    print("|---|---|---|---:|---:|---|")
    for r in rows:
        print("| %s | %s | %s | %s | %s | %s |" % (
            r["suite"], r["transport"], r["test"], size_str(r["size_bytes"]),
            fmt(r["value"]), r["unit"]))

    print("\n## Comparison with baselines\n")
    print("Ratio = value / baseline value (baselines: transports %s, of the same suite"
          " where it has one, else of any suite)." % " and ".join(BASELINES))
    print("Latency, op time and CPU per GB: > 1 is slower or costlier; bandwidth and message rate: > 1 is faster.\n")
    print("| kind | size | suite/transport | value | unit | vs posix,cma,self | vs tcp,self |")
    print("|---|---:|---|---:|---|---:|---:|")
    labs_by_transport = {}
    for lab in order:
        transport = lab.split(" [", 1)[0].split("/", 1)[-1]
        labs_by_transport.setdefault(transport, []).append(lab)
    for kind in ("lat", "rate", "bw", "cpu", "time"):
        for size in sorted({s for (k, _, s) in val if k == kind}):
            for lab in order:
                v = val.get((kind, lab, size))
                if v is None:
                    continue
                suite = lab.split("/", 1)[0] if "/" in lab.split(" [", 1)[0] else None
                ratios = []
                for b in BASELINES:
                    cands = [l for l in labs_by_transport.get(b, []) if (kind, l, size) in val]
                    same = [l for l in cands if suite is not None and l.split("/", 1)[0] == suite]
                    bl = (same or cands or [None])[0]
                    bv = val[(kind, bl, size)] if bl else None
                    ratios.append("%.3g" % (v / bv) if bv else "-")
                print("| %s | %s | %s | %s | %s | %s | %s |" % (
                    KIND_NAME[kind], size_str(size), lab, fmt(v), KIND_UNIT[kind],
                    ratios[0], ratios[1]))


if __name__ == "__main__":
    main()
