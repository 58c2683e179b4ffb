import re,sys,collections
ev=collections.defaultdict(dict)
for l in open(sys.argv[1]):
    m=re.search(r'ff_connect\] (\S+) conn=(\d+) us=(\d+)',l)
    if not m: continue
    st,c,t=m.group(1),int(m.group(2)),int(m.group(3))
    d=ev[c]
    if st=='accept-try':
        d.setdefault('accept-try',t); d['accept-try-n']=d.get('accept-try-n',0)+1
    else:
        d.setdefault(st,t)
steps=['request','connect-queued','connect-dequeued','connect-sent','connect-received','accept-queued','accept-try','accept-sent','accept-received','answered']
conns=sorted(ev)
n=int(sys.argv[2]) if len(sys.argv)>2 else 20
print('conn  '+' '.join('%9s'%s[:9] for s in steps[1:])+'  total(ms) tries')
for c in conns[-n:]:
    d=ev[c]; t0=d.get('request'); prev=t0
    row=[]
    for s in steps[1:]:
        t=d.get(s)
        if t is None or prev is None: row.append('%9s'%'-')
        else: row.append('%9.1f'%((t-prev)/1000)); prev=t
    tot=(d.get('answered',0)-t0)/1000 if t0 and 'answered' in d else float('nan')
    print('%5d '%c+' '.join(row)+'  %8.1f %d'%(tot,d.get('accept-try-n',0)))
