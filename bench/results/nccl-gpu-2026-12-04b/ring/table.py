"""Medians of FreeFlow/Socket per ring size and size, from the run tables here."""
import glob, os, re, statistics
rows = {}
for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.txt"))):
    name = os.path.basename(f)[:-4]
    m = re.match(r"([sc])-(def|r\w+?)-\d+$", name)
    if not m:
        continue
    key = ("sealed" if m[1] == "s" else "clear", {"def": "4 MiB (default)", "r1": "1 MiB", "r2": "2 MiB", "r16": "16 MiB", "r512k": "512 KiB"}[m[2]])
    for line in open(f):
        p = line.split()
        if len(p) == 4 and p[0].isdigit():
            rows.setdefault(key, {}).setdefault(int(p[0]), []).append(float(p[3].rstrip("x")))
sizes = sorted({s for v in rows.values() for s in v})
print("| link, ring per connection | runs | " + " | ".join(f"{s // 1024} KiB" for s in sizes) + " |")
print("|---|---:|" + "---:|" * len(sizes))
for key in sorted(rows):
    v = rows[key]
    n = max(len(x) for x in v.values())
    cells = [f"{statistics.median(v[s]):.2f}x ({min(v[s]):.2f}-{max(v[s]):.2f})" if s in v else "" for s in sizes]
    print(f"| {key[0]}, {key[1]} | {n} | " + " | ".join(cells) + " |")
