"""``python -m freeflow doctor``: is this machine (or container) ready to use
FreeFlow? Checks the router socket, the UCX version and the plugins (and,
with ``--verbs``, that the verbs library lists and opens ff0 and, with UCX,
whether UCX will see ff0: its device node), prints
a table of OK/WARN/FAIL with what to do, and returns non-zero on a FAIL.

It does not speak the router's protocol itself: it asks ``ffrouter stats``
when that binary is around, else it only connects to the socket.
"""

import ctypes
import json
import os
import re
import shutil
import socket as socketlib
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, TextIO

from . import environment as ffenv

OK, WARN, FAIL = "OK", "WARN", "FAIL"
UCX_SERIES = (1, 13)
NCCL_SYMBOLS = tuple(f"ncclNetPlugin_v{v}" for v in range(12, 7, -1))
TIMEOUT = 30


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def find_router_binary() -> Optional[str]:
    """``ffrouter`` on PATH, else the newest one built in the checkout."""
    found = shutil.which("ffrouter")
    if found:
        return found
    root = ffenv.checkout_root()
    if root is None:
        return None
    built = [p for p in (root / "target" / d / "ffrouter" for d in ("release", "debug")) if p.is_file()]
    return str(max(built, key=lambda p: p.stat().st_mtime)) if built else None


def _oneline(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_socket(path: str, router_bin: Optional[str] = None) -> Check:
    name = "router socket"
    start = (
        f"start the router (ffrouter --socket {path}) or, in a container, mount the "
        "tenant's socket directory at /run/freeflow; set FF_ROUTER_SOCKET if the socket is elsewhere"
    )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(name, FAIL, f"no socket at {path}", start)
    except OSError as e:
        return Check(name, FAIL, f"cannot look at {path}: {e.strerror}", "make its directory searchable by this user")
    if not stat.S_ISSOCK(st.st_mode):
        return Check(name, FAIL, f"{path} exists but is not a socket", start)
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
    except ConnectionRefusedError:
        return Check(name, FAIL, f"{path}: nobody is listening (a router that exited left it)", start)
    except PermissionError:
        return Check(name, FAIL, f"{path}: permission denied", "the router makes its sockets mode 0666: check the directory's permissions")
    except OSError as e:
        return Check(name, FAIL, f"{path}: cannot connect: {e.strerror or e}", start)
    finally:
        s.close()
    if router_bin is None:
        return Check(name, WARN, f"{path} accepts connections (no ffrouter binary here, so the handshake was not checked)")
    try:
        r = subprocess.run([router_bin, "stats", "--socket", path], capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"{path}: the router did not answer `ffrouter stats` in {TIMEOUT} s", "look at the router's log; restart it")
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
        return Check(name, FAIL, f"{path}: ffrouter stats failed: {_oneline(why)}",
                     "a router of another version, or not a FreeFlow router: restart the router from this release")
    counters = ", ".join(l.strip() for l in r.stdout.splitlines() if l.strip())
    return Check(name, OK, f"{path}: router answered: {_oneline(counters, 90)}")


def _probe_library(path: Path, symbols=(), extra_env=None) -> dict:
    """Loads ``path`` with RTLD_NOW in a child Python (a broken library
    cannot take the doctor down) and reports which ``symbols`` it exports."""
    code = (
        "import ctypes, json, os, sys\n"
        "p, syms = sys.argv[1], sys.argv[2:]\n"
        "try:\n"
        "    lib = ctypes.CDLL(p, mode=os.RTLD_NOW | os.RTLD_LOCAL)\n"
        "except OSError as e:\n"
        "    print(json.dumps({'error': str(e)})); sys.exit(0)\n"
        "print(json.dumps({'symbols': [s for s in syms if hasattr(lib, s)]}))\n"
    )
    child_env = dict(os.environ, **(extra_env or {}))
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path), *symbols], capture_output=True, text=True,
                           timeout=TIMEOUT, env=child_env)
    except subprocess.TimeoutExpired:
        return {"error": f"loading took more than {TIMEOUT} s"}
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = {"error": f"the process loading it died (exit status {r.returncode})"}
    out["stderr"] = r.stderr.strip()
    return out


def _missing_plugin(name: str, dirs: List[Path], crate: str, installed: str) -> Check:
    where = ", ".join(str(d) for d in dirs)
    return Check(name, FAIL, f"not found (looked in {where})",
                 f"build it (cargo build --release -p {crate}) and install it as {ffenv.INSTALL_DIR}/{installed}, "
                 "or set FF_PLUGIN_DIR to where it is")


def check_nccl_plugin(path: Path, dirs: List[Path]) -> Check:
    name = "NCCL plugin"
    if not path.is_file():
        return _missing_plugin(name, dirs, "nccl-net-plugin", ffenv.NCCL_PLUGIN_NAMES[0])
    r = _probe_library(path, NCCL_SYMBOLS)
    if "error" in r:
        return Check(name, FAIL, f"{path} does not load: {_oneline(r['error'])}",
                     "rebuild it for this machine (missing libraries show up in `ldd " + str(path) + "`)")
    found = r["symbols"]
    if not found:
        return Check(name, FAIL, f"{path} loads but exports no ncclNetPlugin_v8..v12 table: not the FreeFlow NCCL plugin?",
                     "point NCCL_NET_PLUGIN / FF_PLUGIN_DIR at libnccl-net-ff.so")
    versions = sorted(int(s.rsplit("_v", 1)[1]) for s in found)
    return Check(name, OK, f"{path}: loads, exports ABI v{versions[0]}..v{versions[-1]}"
                 if len(versions) > 1 else f"{path}: loads, exports ABI v{versions[0]}")


def check_ucx_plugin(path: Path, dirs: List[Path], router_socket: str) -> Check:
    name = "UCX transport"
    if not path.is_file():
        return _missing_plugin(name, dirs, "ucx-transport", ffenv.UCX_PLUGIN_NAMES[0])
    child = {
        "LD_PRELOAD": ffenv.compose_preload(os.environ.get("LD_PRELOAD"), str(path)),
        "FF_ROUTER_SOCKET": router_socket,
    }
    ucx_info = shutil.which("ucx_info")
    if ucx_info is None:
        r = _probe_library(path)
        lines = [l for l in r.get("stderr", "").splitlines() if "libuct_ff" in l]
        if "error" in r or lines:
            return Check(name, FAIL, f"{path}: {_oneline(r.get('error') or lines[-1])}", "see the UCX version check")
        return Check(name, WARN, f"{path} loads; ucx_info is missing, so UCX registration was not checked",
                     "install ucx_info (Debian: apt install ucx-utils)")
    env = dict(os.environ, **child)
    env.pop("UCX_FF_DISABLE", None)
    env.pop("UCX_TLS", None)
    try:
        r = subprocess.run([ucx_info, "-d"], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"`ucx_info -d` with {path} preloaded did not finish in {TIMEOUT} s")
    out = r.stdout
    if re.search(r"Transport:\s*ff\b", out):
        return Check(name, OK, f"{path}: UCX lists transport ff (device router)")
    if re.search(r"Component:\s*ff\b", out):
        return Check(name, FAIL, f"{path}: registered with UCX, but ff has no device: it could not reach the router at {router_socket}",
                     "fix the router socket check first")
    why = [l for l in r.stderr.splitlines() if "libuct_ff" in l or "ld.so" in l or "error" in l.lower()]
    detail = _oneline(why[-1]) if why else "UCX does not list transport ff"
    fix = "see the UCX version check" if "UCX" in detail else f"check that {path} is a libuct_ff.so built for this machine"
    return Check(name, FAIL, f"{path} preloaded into ucx_info: {detail}", fix)


def check_verbs(path: Path, dirs: List[Path], router_socket: str) -> Check:
    """The verbs library (ffverbs) lists ff0 and opens it (which attaches
    to the router), loaded in a child process as an application would."""
    name = "verbs device"
    if not path.is_file():
        return _missing_plugin(name, dirs, "ffverbs", ffenv.VERBS_LIB_NAMES[0])
    code = (
        "import ctypes, json, os, sys\n"
        "lib = ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_LOCAL, use_errno=True)\n"
        "lib.ibv_get_device_list.restype = ctypes.POINTER(ctypes.c_void_p)\n"
        "lib.ibv_get_device_name.restype = ctypes.c_char_p\n"
        "lib.ibv_get_device_name.argtypes = [ctypes.c_void_p]\n"
        "lib.ibv_open_device.restype = ctypes.c_void_p\n"
        "lib.ibv_open_device.argtypes = [ctypes.c_void_p]\n"
        "lib.ibv_close_device.argtypes = [ctypes.c_void_p]\n"
        "n = ctypes.c_int(0)\n"
        "devs = lib.ibv_get_device_list(ctypes.byref(n))\n"
        "names = [lib.ibv_get_device_name(devs[i]).decode() for i in range(n.value)]\n"
        "ctx = lib.ibv_open_device(devs[0]) if n.value else None\n"
        "if ctx: lib.ibv_close_device(ctx)\n"
        "print(json.dumps({'devices': names, 'opened': bool(ctx)}))\n"
    )
    env = dict(os.environ, FF_ROUTER_SOCKET=router_socket, FFVERBS_QUIET="1")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=TIMEOUT, env=env)
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"{path}: opening the device took more than {TIMEOUT} s")
    except (IndexError, ValueError):
        return Check(name, FAIL, f"{path} does not load: {_oneline(r.stderr or 'no output')}",
                     "rebuild it for this machine (cargo build --release -p ffverbs)")
    if out["devices"] != ["ff0"]:
        return Check(name, FAIL, f"{path} lists {out['devices']}, not ff0: not the FreeFlow verbs library?",
                     "install libffverbs.so as libibverbs.so.1")
    if not out["opened"]:
        why = [l for l in r.stderr.splitlines() if "ffverbs" in l]
        return Check(name, FAIL, f"{path}: ff0 listed, but it does not open: {_oneline(why[-1] if why else r.stderr)}",
                     "fix the router socket check first")
    how = (f"applications run with LD_LIBRARY_PATH={path.parent}" if path.name == "libibverbs.so.1"
           else f"install it as {ffenv.INSTALL_DIR}/{ffenv.VERBS_LIB_NAMES[0]} for applications")
    return Check(name, OK, f"{path}: ff0 listed and opened ({how})")


def check_rdmacm(verbs_path: Path, router_socket: str) -> Check:
    """The rdma_cm library (ffrdmacm) beside the verbs library: installed
    as librdmacm.so.1 next to libibverbs.so.1 (else rdma_cm programs load
    the system's, which does not see ff0), and it lists ff0 through
    rdma_get_devices, loaded in a child process."""
    name = "rdma_cm library"
    installed = verbs_path.name == "libibverbs.so.1"
    path = verbs_path.parent / ("librdmacm.so.1" if installed else "libffrdmacm.so")
    fix = f"cargo build --release -p ffrdmacm, and install libffrdmacm.so as {verbs_path.parent}/librdmacm.so.1"
    if not verbs_path.is_file():
        return Check(name, WARN, "no verbs library, so no rdma_cm either (see the verbs device check)", fix)
    if not path.is_file():
        return Check(name, WARN, f"no {path}: rdma_cm programs (rping, perftest -R) load the system's librdmacm, which does not see ff0", fix)
    code = (
        "import ctypes, json, os, sys\n"
        # Ours first, by its soname, so the rdma_cm library links to it.
        "ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_GLOBAL)\n"
        "cm = ctypes.CDLL(sys.argv[2], mode=os.RTLD_NOW | os.RTLD_LOCAL, use_errno=True)\n"
        "cm.rdma_get_devices.restype = ctypes.c_void_p\n"
        "cm.rdma_free_devices.argtypes = [ctypes.c_void_p]\n"
        "n = ctypes.c_int(0)\n"
        "l = cm.rdma_get_devices(ctypes.byref(n))\n"
        "if l: cm.rdma_free_devices(l)\n"
        # The system's lists ff0 too (through our libibverbs), but has no
        # event channel without the kernel's rdma_cm.
        "cm.rdma_create_event_channel.restype = ctypes.c_void_p\n"
        "cm.rdma_destroy_event_channel.argtypes = [ctypes.c_void_p]\n"
        "ch = cm.rdma_create_event_channel()\n"
        "err = ctypes.get_errno()\n"
        "if ch: cm.rdma_destroy_event_channel(ch)\n"
        "print(json.dumps({'devices': n.value, 'channel': bool(ch), 'error': os.strerror(err)}))\n"
    )
    env = dict(os.environ, FF_ROUTER_SOCKET=router_socket, FFVERBS_QUIET="1")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(verbs_path), str(path)], capture_output=True, text=True, timeout=TIMEOUT, env=env)
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"{path}: listing devices took more than {TIMEOUT} s")
    except (IndexError, ValueError):
        return Check(name, FAIL, f"{path} does not load: {_oneline(r.stderr or 'no output')}", fix)
    if not out["channel"]:
        return Check(name, FAIL, f"{path} makes no event channel ({out['error']}): not FreeFlow's librdmacm", fix)
    if out["devices"] != 1:
        return Check(name, FAIL, f"{path} lists {out['devices']} devices, not ff0: ff0 does not open", "see the verbs device check")
    return Check(name, OK, f"{path}: rdma_get_devices lists ff0, event channels work")


UVERBS_NODE = "/dev/infiniband/uverbs_ff0"


def check_uverbs_node(node: str = UVERBS_NODE) -> Check:
    """UCX (1.13) lists a verbs device only if /dev/infiniband/<dev_name>
    is a character device it may open read-write (ffverbs never opens
    it): without it, plain verbs programs (perftest) still run, but UCX's
    rc_verbs and ud_verbs do not see ff0."""
    name = "UCX verbs node"
    fix = (f"for UCX's rc_verbs/ud_verbs on ff0, run the program through tools/ffuverbs "
           f"(as root: makes {node} in a mount namespace of its own) or give the container "
           f"the node (docker run --device /dev/null:{node})")
    try:
        st = os.stat(node)
    except OSError:
        return Check(name, WARN, f"no {node}: UCX will not list ff0 (perftest and other verbs programs are not affected)", fix)
    if not stat.S_ISCHR(st.st_mode):
        return Check(name, WARN, f"{node} is not a character device: UCX will not list ff0", fix)
    if not os.access(node, os.R_OK | os.W_OK):
        return Check(name, WARN, f"{node} is not readable and writable here: UCX will not list ff0", fix)
    return Check(name, OK, f"{node} present: UCX lists ff0 (UCX_TLS=rc_v,self UCX_NET_DEVICES=ff0:1)")


def ucx_version() -> Optional[tuple]:
    """UCX's version as (major, minor, release), from ``ucx_info -v`` or
    else libucp; None if UCX is not installed."""
    ucx_info = shutil.which("ucx_info")
    if ucx_info:
        try:
            r = subprocess.run([ucx_info, "-v"], capture_output=True, text=True, timeout=TIMEOUT)
            m = re.search(r"Version\s+(\d+)\.(\d+)\.(\d+)", r.stdout)
            if m:
                return tuple(int(x) for x in m.groups())
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        ucp = ctypes.CDLL("libucp.so.0")
    except OSError:
        return None
    v = [ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()]
    ucp.ucp_get_version(*(ctypes.byref(x) for x in v))
    return tuple(x.value for x in v)


def check_ucx_version() -> Check:
    name = "UCX version"
    v = ucx_version()
    want = "%d.%d" % UCX_SERIES
    if v is None:
        return Check(name, FAIL, "UCX not found (no ucx_info, no libucp.so.0)",
                     f"install UCX {want} (Debian 12: apt install libucx0 ucx-utils)")
    have = ".".join(map(str, v))
    if tuple(v[:2]) != UCX_SERIES:
        return Check(name, FAIL, f"UCX {have}; libuct_ff.so is built for UCX {want}.x",
                     f"use UCX {want} (Debian 12's), or run without UCX (--no-ucx) and use NCCL only")
    return Check(name, OK, f"UCX {have}")


def run_checks(nccl: bool = True, ucx: bool = True, plugin_dir: Optional[str] = None,
               socket: Optional[str] = None, verbs: bool = False) -> List[Check]:
    sock = ffenv.router_socket(socket)
    dirs = ffenv.plugin_dirs(plugin_dir)
    checks = [check_socket(sock, find_router_binary())]
    if nccl:
        checks.append(check_nccl_plugin(ffenv.nccl_plugin(plugin_dir), dirs))
    if ucx:
        checks.append(check_ucx_version())
        checks.append(check_ucx_plugin(ffenv.ucx_plugin(plugin_dir), dirs, sock))
    if verbs:
        verbs_lib = ffenv.verbs_library(plugin_dir)
        checks.append(check_verbs(verbs_lib, dirs, sock))
        checks.append(check_rdmacm(verbs_lib, sock))
        if ucx:
            checks.append(check_uverbs_node())
    return checks


def report(checks: List[Check], out: TextIO = sys.stdout) -> int:
    """Prints the table; returns the exit status (1 if anything FAILed)."""
    width = max(len(c.name) for c in checks)
    print(f"{'CHECK'.ljust(width)}  RESULT  DETAIL", file=out)
    for c in checks:
        print(f"{c.name.ljust(width)}  {c.status.ljust(6)}  {c.detail}", file=out)
        if c.fix and c.status != OK:
            print(f"{''.ljust(width)}          -> {c.fix}", file=out)
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        print(f"\n{len(failed)} of {len(checks)} checks failed.", file=out)
        return 1
    print("\nFreeFlow is ready." if all(c.status == OK for c in checks)
          else "\nUsable; see the warnings.", file=out)
    return 0


def main(nccl: bool = True, ucx: bool = True, plugin_dir: Optional[str] = None,
         socket: Optional[str] = None, verbs: bool = False) -> int:
    return report(run_checks(nccl=nccl, ucx=ucx, plugin_dir=plugin_dir, socket=socket, verbs=verbs))
