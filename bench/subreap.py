#!/usr/bin/python3
"""Run a command and count the CPU of everything it starts.

Usage: /usr/bin/python3 bench/subreap.py OUTFILE CMD [ARGS...]

Runs CMD as a child of a "child subreaper" (prctl PR_SET_CHILD_SUBREAPER),
so that descendants orphaned on the way (mpirun does not always wait for
its rsh agents, which then are reparented) are reaped here rather than by
init, and their CPU time counts. Once CMD has exited, waits up to 10 s for
such orphans, then writes "CPU_SECONDS" (user + system of CMD and every
descendant reaped) to OUTFILE and exits with CMD's status (128 + N if a
signal N ended it).
"""

import ctypes
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, cmd = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("subreap: prctl(PR_SET_CHILD_SUBREAPER): errno %d" % ctypes.get_errno())
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            sys.stderr.write("subreap: %s: %s\n" % (cmd[0], e))
            os._exit(127)
    status, deadline = None, None
    while True:
        try:
            p, st = os.waitpid(-1, os.WNOHANG if status is not None else 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if p == 0:  # orphans still running after CMD ended
            if time.monotonic() > deadline:
                sys.stderr.write("subreap: descendants of %s still running 10 s after it ended\n" % cmd[0])
                break
            time.sleep(0.05)
            continue
        if p == pid:
            code = os.waitstatus_to_exitcode(st)
            status = code if code >= 0 else 128 - code
            deadline = time.monotonic() + 10
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        f.write("%.3f\n" % (ru.ru_utime + ru.ru_stime))
    sys.exit(status)


if __name__ == "__main__":
    main()
