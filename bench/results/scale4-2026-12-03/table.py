import sys,os,re,statistics as st
d=sys.argv[1]; builds=sys.argv[2:]
def csv(p):
    r={}
    for l in open(p):
        f=l.strip().split(',')
        if len(f)>=5 and f[2] in('agg_mb_per_s','jain'): r[(f[2],int(f[3]))]=float(f[4])
    return r
def perf(p):
    r={}
    if os.path.exists(p):
        for l in open(p):
            m=re.match(r'\s*([\d,]+)\s+(\S+)',l)
            if m: r[m.group(2)]=int(m.group(1).replace(',',''))
    return r
print("| build | N = 1 MB/s | N = 64 MB/s (Jain) | N = 512 MB/s | 512 / 1 by round | Jain at 512 | page faults, futex calls in 3 s at 512 |")
print("|---|---|---|---|---|---|---|")
for b in builds:
    rows=[]
    i=1
    while os.path.exists(f"{d}/{b}-{i}/results.csv"):
        rows.append((csv(f"{d}/{b}-{i}/results.csv"),perf(f"{d}/{b}-{i}/perfstat.txt"))); i+=1
    g=lambda k,n:[r[(k,n)] for r,_ in rows if (k,n) in r]
    one,s64,j64,s512,j512=g('agg_mb_per_s',1),g('agg_mb_per_s',64),g('jain',64),g('agg_mb_per_s',512),g('jain',512)
    ratio=[r[('agg_mb_per_s',512)]/r[('agg_mb_per_s',1)] for r,_ in rows if ('agg_mb_per_s',1) in r and ('agg_mb_per_s',512) in r]
    f=lambda v,fmt="{:,.0f}": " / ".join(fmt.format(x) for x in v)+(f" (med {fmt.format(st.median(v))})" if v else "")
    pf=" / ".join(f"{p.get('page-faults',0)/1000:.0f}k, {p.get('syscalls:sys_enter_futex',0)/1000:.0f}k" for _,p in rows)
    print(f"| {b} | {f(one)} | {f(s64)} ({min(j64) if j64 else '-'}-{max(j64) if j64 else '-'}) | {f(s512)} | {f(ratio,'{:.2f}')} | {f(j512,'{:.3f}')} | {pf} |")
