"""By hand (not a benchmark script): how long after its router dies an
rdma_cm program over ff0 gets RDMA_CM_EVENT_DEVICE_REMOVAL, and whether it
connects again through the router restarted. Run from the repository root
after `cargo build --release -p ffrouter -p ffverbs -p ffrdmacm` and
`cc -O2 -o /tmp/ffcmcheck ffrdmacm/tests/c/ffcmcheck.c -lrdmacm -libverbs`:
    python3 bench/results/rdmacm-removal-2026-12-06/removal.py [ROUNDS]
Each round: a router, `ffcmcheck gone` (a listener and a connected pair,
4,096 bytes checked), the router SIGKILLed right after READY, then a new
router and a new listener and pair in the same process. ffcmcheck prints
the time from READY to the first DEVICE_REMOVAL; the router is killed a
random 0-2 s after READY, and each round prints the time from the kill to
the first DEVICE_REMOVAL (to about a millisecond: READY is read from a
pipe)."""
import os, random, re, subprocess, sys, tempfile, time

top = os.getcwd()
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
d = tempfile.mkdtemp(prefix="ffremoval.")
os.makedirs(f"{d}/lib")
os.symlink(f"{top}/target/release/libffrdmacm.so", f"{d}/lib/librdmacm.so.1")
os.symlink(f"{top}/target/release/libffverbs.so", f"{d}/lib/libibverbs.so.1")
sock = f"{d}/ff.sock"
router = lambda: subprocess.Popen([f"{top}/target/release/ffrouter", "--socket", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
env = dict(os.environ, LD_LIBRARY_PATH=f"{d}/lib", FF_ROUTER_SOCKET=sock)
for i in range(rounds):
    r = router()
    time.sleep(0.5)
    p = subprocess.Popen(["/tmp/ffcmcheck", "gone"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    while (line := p.stdout.readline().strip()) != "READY":
        if not line and p.poll() is not None:
            sys.exit("ffcmcheck ended early")
    ready = time.monotonic()
    time.sleep(random.uniform(0, 2))
    killed = time.monotonic() - ready
    r.kill()
    r.wait()
    seen = []
    while (line := p.stdout.readline().strip()) not in ("WAITING", ""):
        seen.append(line)
    r = router()
    time.sleep(0.5)
    p.stdin.write("back\n")
    p.stdin.flush()
    rest = p.communicate(timeout=30)[0]
    r.kill()
    r.wait()
    first = [float(re.search(r"([0-9.]+) ms", x).group(1)) for x in seen if x.startswith("first")]
    after = f"{first[0] - killed * 1e3:.0f} ms after the kill" if first else "no DEVICE_REMOVAL"
    print(i, "exit", p.returncode, f"killed {killed * 1e3:.0f} ms after READY,", after + ",", "attached anew" if "OK attached anew" in rest else rest[-300:])
