import sys,glob,statistics as st
def jain(s): return sum(s)**2/(len(s)*sum(v*v for v in s))
for f in sys.argv[1:]:
    t=open(f).read()
    if 'EACH' not in t: continue
    x=[float(v) for v in t.split('EACH mb_per_s ')[1].split()]
    cls=[(0,64),(64,128),(128,256),(256,512)]
    print(f.split('/')[-2], 'jain %.3f'%jain(x), 'class means', [round(st.mean(x[a:b]),2) for a,b in cls], 'jain in class', [round(jain(x[a:b]),3) for a,b in cls])
