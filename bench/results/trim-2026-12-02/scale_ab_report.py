import csv, glob, statistics, sys, collections
root = sys.argv[1]
rows = collections.defaultdict(list)  # (variant, placement, metric, n) -> [values]
for path in sorted(glob.glob(f"{root}/scale-*/results.csv")):
    v = path.split("/")[-2].removeprefix("scale-").rsplit("-", 1)[0]
    for r in csv.DictReader(open(path)):
        rows[(v, r["placement"], r["metric"], int(r["conns"]))].append(float(r["value"]))
def med(k):
    x = rows.get(k)
    return (statistics.median(x), x) if x else (None, [])
print("| placement | N | idle shared memory per conn KiB, main / trim | aggregate MB/s main / trim (each run) | Jain main / trim | routers' CPU %core over idle-2 s, main / trim | same, from 5 s into idle on, main / trim | bad messages main / trim |")
print("|---|---:|---|---|---|---|---|---|")
for pl in ["across", "local"]:
    for n in [1, 64, 256]:
        def pair(metric, f=lambda x: x, fmt="{:.0f}", each=False):
            out = []
            for v in ["main", "trim"]:
                m, xs = med((v, pl, metric, n))
                if m is None: out.append("—"); continue
                s = fmt.format(f(m))
                if each: s += " (" + ", ".join(fmt.format(f(x)) for x in xs) + ")"
                out.append(s)
            return " / ".join(out)
        print(f"| {pl} | {n} | {pair('shmem_committed', lambda x: x / n)} | {pair('agg_mb_per_s', each=True)} | {pair('jain', fmt='{:.3f}')} | {pair('routers_idle_cpu', fmt='{:.2f}', each=True)} | {pair('routers_idle_cpu_settled', fmt='{:.2f}', each=True)} | {pair('bad_messages', fmt='{:.0f}')} |")
