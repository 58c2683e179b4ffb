#!/usr/bin/env python3
# slice.py US PID...: set EEVDF custom slice (sched_runtime) of every thread of PIDs
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
us = int(sys.argv[1])
for pid in sys.argv[2:]:
    for tid in os.listdir(f"/proc/{pid}/task"):
        # size policy flags nice prio runtime deadline period
        nice = os.getpriority(os.PRIO_PROCESS, int(tid))
        a = struct.pack("IIQiIQQQ", 48, 0, 0, nice, 0, us * 1000, 0, 0)
        buf = ctypes.create_string_buffer(a)
        r = libc.syscall(314, int(tid), buf, 0)
        if r != 0:
            print("tid", tid, "errno", ctypes.get_errno(), file=sys.stderr)
