#!/usr/bin/env python3
"""bench/sched_idle.py - is idle CPU time idle because nothing could run?

    perf record -e sched:sched_switch,sched:sched_wakeup -a -o F -- CMD
    perf script -i F -F comm,tid,cpu,time,event,trace > TRACE
    bench/sched_idle.py TRACE [--comm NAME]

Reads the scheduler trace of a benchmark and reports, over the time in
which a thread named NAME (default: allreduce, bench/mpi/allreduce.c's
ranks) ran: the CPUs' idle time, how much of it passed while another CPU
had threads ready to run waiting for it (the scheduler left them stacked
on one CPU while this one idled), and which threads waited then: put
there by a wake-up, or preempted there while they ran.

A thread counts as waiting on the CPU its wake-up named (or the CPU that
preempted it) until it runs again, wherever that is: a thread that the
load balancer moved to an idle CPU counts as waiting until it ran there,
so the stacked time is an upper bound, by at most the balancer's delay.
A thread seen waiting for longer than STALE (100 ms) is taken for a lost
event (perf drops events when its buffers fill) and no longer counted.
"""
import argparse
import collections
import re
import sys

SWITCH = re.compile(
    r"\s*\S.*?\s+-?\d+\s+\[(\d+)\]\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) "
    r"prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
STALE = 0.1
WAKEUP = re.compile(r"\s*\S.*?\s+-?\d+\s+\[\d+\]\s+([\d.]+): sched:sched_wakeup: comm=(.*?) pid=(\d+) prio=\d+ target_cpu=(\d+)")


def events(lines):
    for line in lines:
        m = SWITCH.match(line)
        if m:
            cpu, t, pcomm, ppid, state, ncomm, npid = m.groups()
            yield float(t), "switch", int(cpu), (pcomm, int(ppid), state, ncomm, int(npid))
            continue
        m = WAKEUP.match(line)
        if m:
            t, comm, pid, cpu = m.groups()
            yield float(t), "wakeup", int(cpu), (comm, int(pid))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--comm", default="allreduce", help="the window is while threads of this name run")
    a = ap.parse_args()
    evs = list(events(open(a.trace)))
    ts = [t for t, kind, _, d in evs if kind == "switch" and d[3] == a.comm]
    if not ts:
        sys.exit(f"no thread named {a.comm} ran in {a.trace}")
    t0, t1 = min(ts), max(ts)
    cpus = sorted({cpu for _, _, cpu, _ in evs})
    running = {c: None for c in cpus}  # None: not known yet; 0: idle
    waiting = {}  # pid -> (the CPU it waits on, comm, since when, woken or preempted)
    idle = stacked = 0.0
    who = collections.Counter()
    how = collections.Counter()
    last = None
    for t, kind, cpu, d in evs:
        if last is not None and t0 <= t <= t1:
            dt = t - max(last, t0)
            for c in cpus:
                if running[c] != 0:
                    continue
                idle += dt
                elsewhere = [(comm, why) for (wc, comm, since, why) in waiting.values() if wc != c and t - since < STALE]
                if elsewhere:
                    stacked += dt
                    for comm, why in elsewhere:
                        who[comm] += dt / len(elsewhere)
                        how[(comm, why)] += dt / len(elsewhere)
        last = t
        if kind == "wakeup":
            comm, pid = d
            if pid not in running.values():
                waiting[pid] = (cpu, comm, t, "woken")
        else:
            pcomm, ppid, state, _ncomm, npid = d
            running[cpu] = npid
            waiting.pop(npid, None)
            if state.startswith("R") and ppid != 0:
                waiting[ppid] = (cpu, pcomm, t, "preempted")
    span = t1 - t0
    print(f"window: {span:.3f} s while {a.comm} ran, {len(cpus)} CPUs ({len(cpus) * span:.3f} CPU-s)")
    print(f"idle: {idle:.3f} CPU-s ({idle / (len(cpus) * span) * 100:.1f} %)")
    share = stacked / idle * 100 if idle else 0.0
    print(f"idle while another CPU had threads waiting to run: {stacked:.3f} CPU-s ({share:.0f} % of the idle time)")
    for comm, s in who.most_common(8):
        print(f"  {s * 1000:8.1f} ms  {comm} waiting ({how[(comm, 'preempted')] * 1000:.1f} preempted there, {how[(comm, 'woken')] * 1000:.1f} woken there)")


if __name__ == "__main__":
    main()
