#!/bin/bash
# bench/allreduce_profile.sh - where the CPU goes in bench/allreduce_hosts.sh's
# MPI_Allreduce across two hosts, per transport.
#
#   bench/allreduce_profile.sh [--bin DIR] [--secs N] [--out DIR] [TRANSPORT...]
#
# For each TRANSPORT (default: ff ff-clear tcp,self; any that
# allreduce_hosts.sh takes) runs allreduce_hosts.sh with that transport
# alone, one round of 400 allreduces, and samples every CPU of the machine
# with perf (software clock, 499 Hz) for N seconds (default 6) in the
# middle of the timed loop. Prints, per transport, the share of the
# machine's samples in each category (copies, sealing, the reduction,
# ff's client polling, UCX/MPI, scheduler and yields, other kernel work,
# other router code, idle, other programs) and the same in CPU ms per
# allreduce. Writes DIR/profile.md (default: a temporary directory) and
# keeps the perf data there. Needs root and perf (linux-perf).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="" secs=6 out="" ts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift ;;
        --secs) secs=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "unknown argument $1" >&2; exit 2 ;;
        *) ts+=("$1") ;;
    esac
    shift
done
[ ${#ts[@]} -gt 0 ] || ts=(ff ff-clear tcp,self)
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
[ -n "$out" ] || out=$(mktemp -d /tmp/ffarprof.XXXXXX)
mkdir -p "$out"
bin_args=()
[ -z "$bin" ] || bin_args=(--bin "$bin")
job=""
cleanup() { [ -z "$job" ] || kill "$job" 2>/dev/null || true; }
trap cleanup EXIT

for t in "${ts[@]}"; do
    name=$(echo "$t" | tr -c 'A-Za-z0-9_=.+\n-' '_')
    "$here/allreduce_hosts.sh" --transports "$t" --rounds 1 --iters 400 --no-tf "${bin_args[@]}" \
        --out "$out/run-$name" > "$out/run-$name.log" 2>&1 &
    job=$!
    started=0
    for _ in $(seq 1200); do
        if pgrep -f "allreduce 7400000 400 3" >/dev/null; then started=1; break; fi
        kill -0 "$job" 2>/dev/null || break
        sleep 0.1
    done
    [ $started = 1 ] || { tail -20 "$out/run-$name.log" >&2; echo "allreduce over $t did not start" >&2; exit 1; }
    sleep 3  # start-up and warm-up
    perf record -q -e cpu-clock -F 499 -a -o "$out/perf-$name.data" -- sleep "$secs" 2>/dev/null
    wait "$job" || { tail -20 "$out/run-$name.log" >&2; echo "allreduce over $t failed" >&2; exit 1; }
    job=""
    perf report -i "$out/perf-$name.data" --sort comm,dso,sym --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' > "$out/perf-$name.txt"
done

/usr/bin/python3 - "$out" "${ts[@]}" <<'EOF' | tee "$out/profile.md"
import re, sys
out, ts = sys.argv[1], sys.argv[2:]
CATS = ["copies", "sealing", "reduction", "ff client polling", "UCX/MPI", "scheduler, yields",
        "other kernel", "other router", "idle", "other programs"]
def cat(comm, dso, sym):
    if comm == "swapper":
        return "idle"
    ours = comm in ("allreduce",) or comm.startswith(("pump", "peer-", "client-", "accept-", "qos", "metrics", "ffrouter"))
    if re.search(r"memmove|memcpy|_copy_to_iter|_copy_from_iter|copy_user|copy_page", sym):
        return "copies" if ours or comm.startswith("ksoftirq") else "other programs"
    if not ours and not comm.startswith(("ksoftirq", "kworker")):
        return "other programs"
    if re.search(r"encrypt|decrypt|aegis", sym):
        return "sealing"
    if "mca_op" in dso:
        return "reduction"
    if dso == "libuct_ff.so":
        return "ff client polling"
    if re.search(r"libuc[pts]|mca_|libmpi|libopen-", dso):
        return "UCX/MPI"
    if re.search(r"schedule|sched_yield|switch|pick_next|yield", sym):
        return "scheduler, yields"
    if dso == "[kernel.kallsyms]":
        return "other kernel"
    if dso == "ffrouter":
        return "other router"
    return "UCX/MPI" if comm == "allreduce" else "other router" if ours else "other programs"
rows = {}
for t in ts:
    name = re.sub(r"[^A-Za-z0-9_=.+\-]", "_", t)
    shares = {c: 0.0 for c in CATS}
    for line in open(f"{out}/perf-{name}.txt"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            shares[cat(m.group(2), m.group(3), m.group(4).strip())] += float(m.group(1))
    log = open(f"{out}/run-{name}.log").read()
    r = re.search(r"ms_median=([\d.]+).*cpu_ms_per_op=([\d.]+)", log)
    rows[t] = (shares, float(r.group(1)), float(r.group(2)))
print("| category | " + " | ".join(f"{t}: % of machine | CPU ms / allreduce" for t in ts) + " |")
print("|---|" + "---:|---:|" * len(ts))
for c in CATS:
    print(f"| {c} | " + " | ".join(f"{rows[t][0][c]:.1f} | {rows[t][0][c] / 100 * 2 * rows[t][1]:.1f}" for t in ts) + " |")
print("| time per allreduce (ms) | " + " | ".join(f"{rows[t][1]:.1f} | " for t in ts) + " |")
print()
print("CPU ms per allreduce = share x 2 CPUs x time per allreduce (the run's median).")
EOF
echo "profile: $out" >&2
