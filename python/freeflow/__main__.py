"""Command line: ``python -m freeflow {env,doctor,run}`` (also ``freeflow``)."""

import argparse
import json
import os
import shlex
import sys

from . import doctor
from .environment import INSTALL_DIR, env, mpirun_args


def _common(p: argparse.ArgumentParser, fallback: bool = True) -> None:
    p.add_argument("--no-nccl", dest="nccl", action="store_false", help="leave NCCL alone")
    p.add_argument("--no-ucx", dest="ucx", action="store_false", help="leave UCX (and Open MPI) alone")
    p.add_argument("--plugin-dir", help="where the plugins are (default: $FF_PLUGIN_DIR, /usr/local/lib/freeflow, the checkout's build)")
    p.add_argument("--socket", help="router socket (default: $FF_ROUTER_SOCKET or /run/freeflow/ffrouter.sock)")
    if fallback:
        p.add_argument("--no-mpi", dest="mpi", action="store_false", help="no OMPI_MCA_* settings")
        p.add_argument("--allow-fallback", action="store_true",
                       help="let NCCL and UCX use other networks if FreeFlow is unusable (default: fail loudly)")


def _env_of(a: argparse.Namespace, base=None) -> dict:
    return env(nccl=a.nccl, ucx=a.ucx, mpi=a.mpi, plugin_dir=a.plugin_dir, socket=a.socket,
               allow_fallback=a.allow_fallback, base=base)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="freeflow", description="FreeFlow: environment, checks and launcher")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_env = sub.add_parser("env", help="print the FreeFlow environment")
    _common(p_env)
    p_env.add_argument("--format", choices=("shell", "json", "k8s", "mpirun"), default="shell",
                       help="shell: export lines; json; k8s: a container's env list (plugins in /usr/local/lib/freeflow unless --plugin-dir); mpirun: mpirun arguments")
    p_doc = sub.add_parser("doctor", help="check the router socket, the plugins and UCX; non-zero exit on failure")
    _common(p_doc, fallback=False)
    p_doc.add_argument("--verbs", action="store_true", help="also check the verbs library (ffverbs): ff0 is listed and opens")
    p_run = sub.add_parser("run", help="run a command with the FreeFlow environment: run [options] -- CMD [ARGS...]")
    _common(p_run)
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    a = ap.parse_args(argv)

    if a.cmd == "doctor":
        return doctor.main(nccl=a.nccl, ucx=a.ucx, plugin_dir=a.plugin_dir, socket=a.socket, verbs=a.verbs)
    if a.cmd == "env":
        if a.format == "mpirun":
            print(shlex.join(mpirun_args(nccl=a.nccl, ucx=a.ucx, mpi=a.mpi, plugin_dir=a.plugin_dir,
                                         socket=a.socket, allow_fallback=a.allow_fallback)))
            return 0
        if a.format == "k8s":
            # A pod's env is not this shell's: the plugins where an image
            # installs them, and nothing taken from this environment.
            a.plugin_dir = a.plugin_dir or INSTALL_DIR
            e = _env_of(a, base={})
        else:
            e = _env_of(a)
        if a.format == "json":
            print(json.dumps(e, indent=2))
        elif a.format == "k8s":
            for k, v in e.items():
                print(f"- name: {k}\n  value: {json.dumps(v)}")
        else:
            for k, v in e.items():
                print(f"export {k}={shlex.quote(v)}")
        return 0
    # run
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("run: no command given (freeflow run [options] -- CMD [ARGS...])")
    merged = dict(os.environ)
    merged.update(_env_of(a))
    sys.stdout.flush()
    try:
        os.execvpe(cmd[0], cmd, merged)
    except OSError as e:
        print(f"freeflow run: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
