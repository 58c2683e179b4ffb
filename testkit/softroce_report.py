#!/usr/bin/env python3
"""Turns the BENCH lines of testkit/softroce.sh bench into a README table.

usage: softroce_report.py RESULTS CPU NCPU KERNEL
"""
import statistics
import sys


def main():
    path, cpu, ncpu, kver = sys.argv[1:5]
    # (tool, size) -> every round's row (a round a tool gave up in has an
    # empty value: a missing sample).
    rows = {}
    for line in open(path):
        if not line.startswith("BENCH "):
            continue
        kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        rows.setdefault((kv["tool"], int(kv["size"])), []).append(kv)
    rounds = len({kv.get("round", "1") for rs in rows.values() for kv in rs})

    def samples(tool, size, key):
        out = []
        for kv in rows.get((tool, size), []):
            try:
                out.append(float(kv[key]))
            except (KeyError, ValueError):
                pass
        return out

    def val(tool, size, key):
        v = samples(tool, size, key)
        return statistics.median(v) if v else None

    def n(tool, size, key):
        return f"{len(samples(tool, size, key))}/{rounds}"

    def fmt(v, d=1):
        return "—" if v is None else f"{v:.{d}f}"

    def ratio(a, b):
        return "—" if a is None or not b else f"{a / b:.2f}x"

    out = []
    out.append("# ff over the RDMA link vs perftest on rxe0 vs ff over TCP, in two QEMU guests")
    out.append("")
    out.append("**Emulated soft-RoCE (rdma_rxe) in two TCG guests on one small VM: these numbers")
    out.append("say nothing about RDMA hardware speed.** rxe does in software what a NIC does, and")
    out.append("every guest instruction is emulated by QEMU's TCG; both guests share the host's cores.")
    out.append("They only compare ff's RDMA link with the verbs device it runs on, on the same")
    out.append("emulated link, in one run: every value is the median of the run's rounds")
    out.append("(each round runs every tool once, in the order of the table; the samples")
    out.append("column says how many rounds gave a value for ff RDMA / ib_read_bw).")
    out.append("")
    out.append(f"- Host: {ncpu} vCPUs, {cpu}; guests: Debian 12, kernel {kver}, QEMU TCG, 2 vCPUs and")
    out.append("  2 GiB each, virtio-net joined by a QEMU socket netdev over loopback, rxe0 on it.")
    out.append(f"- Produced by `testkit/softroce.sh bench` (one run, {rounds} rounds; `guest*.log` are the raw outputs).")
    out.append("- Bandwidth: perftest `ib_write_bw`/`ib_read_bw -s SIZE -n N` (BW average), ffbench")
    out.append("  `stream --size SIZE --iters N --window W` through two routers (`--peer-streams 4`),")
    out.append("  over RDMA (`--peer-transport rdma`) and over TCP, with W = min(128, N) messages in")
    out.append("  flight, as perftest keeps (its tx depth, 128, at most its iterations); the \"window 8\"")
    out.append("  column is ff over RDMA with 8 in flight (NCCL's requests per connection) where W")
    out.append("  differs. Latency: `ib_write_lat -s 8` (t_typical), ffbench `pingpong --size 8`")
    out.append("  (median half round trip).")
    out.append("")
    out.append("| size | ib_write_bw MB/s | ib_read_bw MB/s | ff RDMA MB/s | ff TCP MB/s | ff RDMA / ib_read_bw | samples | ff RDMA window 8 MB/s | its ratio | ib_write_bw over ff0 MB/s | ff0 / rxe0 ib_write_bw |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sorted({s for (t, s) in rows if t.endswith("_bw") or t.endswith("stream")}):
        w = val("ib_write_bw", size, "mb_per_s")
        r = val("ib_read_bw", size, "mb_per_s")
        fr = val("ff_rdma_stream", size, "mb_per_s")
        ft = val("ff_tcp_stream", size, "mb_per_s")
        fv = val("ff0_ib_write_bw", size, "mb_per_s")
        k = f"{n('ff_rdma_stream', size, 'mb_per_s')} / {n('ib_read_bw', size, 'mb_per_s')}"
        f8 = val("ff_rdma_stream_w8", size, "mb_per_s") if ("ff_rdma_stream_w8", size) in rows else fr
        out.append(f"| {size} | {fmt(w)} | {fmt(r)} | {fmt(fr)} | {fmt(ft)} | {ratio(fr, r)} | {k} | {fmt(f8)} | {ratio(f8, r)} | {fmt(fv)} | {ratio(fv, w)} |")
    out.append("")
    out.append("Cost of the same runs, on both guests (medians): busy CPU seconds per GB moved (all")
    out.append("processes and the kernel's work, rxe's included, from `/proc/stat` of each guest,")
    out.append("from just before its side of a test starts to just after it ends) and rxe0's packets")
    out.append("(sent + received on both guests: each packet counts twice, from its `hw_counters`)")
    out.append("per MB moved, and its retransmissions after an ACK timeout (`completer_retry_err`,")
    out.append("both guests, per test). ffbench's bytes include its warm-up messages.")
    out.append("")
    out.append("| size | ib_read_bw CPU s/GB | ff RDMA CPU s/GB | ff TCP CPU s/GB | ib_write_bw CPU s/GB | ib_read_bw packets/MB | ff RDMA packets/MB | ib_write_bw packets/MB | retries ib_read_bw / ff RDMA (per round) |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def per(tool, size, key, unit):
        v = []
        for kv in rows.get((tool, size), []):
            try:
                b = float(kv["bytes"])
                if b > 0 and kv.get("mb_per_s"):
                    v.append(float(kv[key]) / (b / unit))
            except (KeyError, ValueError):
                pass
        return statistics.median(v) if v else None

    for size in sorted({s for (t, s) in rows if t.endswith("_bw") or t.endswith("stream")}):
        cells = [fmt(per(t, size, "cpu_s", 1e9), 2) for t in ("ib_read_bw", "ff_rdma_stream", "ff_tcp_stream", "ib_write_bw")]
        cells += [fmt(per(t, size, "pkts", 1e6), 0) for t in ("ib_read_bw", "ff_rdma_stream", "ib_write_bw")]
        cells.append(" / ".join(",".join(kv.get("retries", "—") for kv in rows.get((t, size), [])) for t in ("ib_read_bw", "ff_rdma_stream")))
        out.append(f"| {size} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| 8 B | ib_write_lat µs | ff RDMA µs | ff TCP µs | ff RDMA / ib_write_lat | ib_write_lat over ff0 µs |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    l = val("ib_write_lat", 8, "lat_us")
    fr = val("ff_rdma_pingpong", 8, "lat_us")
    ft = val("ff_tcp_pingpong", 8, "lat_us")
    fv = val("ff0_ib_write_lat", 8, "lat_us")
    out.append(f"| half round trip | {fmt(l)} | {fmt(fr)} | {fmt(ft)} | {ratio(fr, l)} | {fmt(fv)} |")
    out.append("")
    out.append("Targets from issue 14 (on this same emulated link): bandwidth ≥ 0.8x raw `ib_read_bw`,")
    out.append("latency ≤ 1.5x raw `ib_write_lat`.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
