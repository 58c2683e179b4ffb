"""Where the FreeFlow plugins are, and the environment that makes NCCL, UCX
and Open MPI use them.

Plugins are looked for in, first match per file:
1. ``plugin_dir`` if given, else ``$FF_PLUGIN_DIR`` if set (only there);
2. ``/usr/local/lib/freeflow`` (the installed names);
3. ``target/release`` then ``target/debug`` of the source checkout that this
   package, or else the current directory, is in (cargo's names).
"""

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

DEFAULT_SOCKET = "/run/freeflow/ffrouter.sock"
INSTALL_DIR = "/usr/local/lib/freeflow"
# Installed name first, then the name cargo gives the file.
NCCL_PLUGIN_NAMES = ("libnccl-net-ff.so", "libnccl_net_ff.so")
UCX_PLUGIN_NAMES = ("libuct_ff.so",)
# The verbs library: installed as libibverbs.so.1 in a directory of its own
# (LD_LIBRARY_PATH names it), built as libffverbs.so.
VERBS_LIB_NAMES = ("verbs/libibverbs.so.1", "libffverbs.so")
NCCL_NET_NAME = "FreeFlow"  # the network name the NCCL plugin registers
UCX_TLS_STRICT = "ff,self"
UCX_TLS_FALLBACK = "ff,tcp,self"
# Open MPI: use the UCX pml with any UCX transport and device (its defaults
# only allow InfiniBand ones). Same as --mca NAME VALUE.
# Open MPI over UCX with any transport (ours included). No core binding:
# every container is its own "node" to mpirun, so each would bind its rank
# to the same first core of a shared host (Horovod's docs ask for
# --bind-to none too: ranks run many threads).
MPI_MCA = (("pml", "ucx"), ("pml_ucx_tls", "any"), ("pml_ucx_devices", "any"), ("hwloc_base_binding_policy", "none"))


def checkout_root(start: Optional[Path] = None) -> Optional[Path]:
    """The FreeFlow source checkout containing this package, or else the
    current directory (or ``start``); None outside one."""
    starts = [start] if start is not None else [Path(__file__).resolve().parent]
    if start is None:
        try:
            starts.append(Path.cwd())
        except OSError:
            pass
    for s in starts:
        for d in (s, *s.parents):
            if (d / "Cargo.toml").is_file() and (d / "ffcore").is_dir():
                return d
    return None


def plugin_dirs(plugin_dir: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> List[Path]:
    """The directories searched for plugins, in order."""
    environ = os.environ if environ is None else environ
    explicit = plugin_dir or environ.get("FF_PLUGIN_DIR")
    if explicit:
        # Absolute: the variables must work from any directory.
        return [Path(os.path.abspath(os.path.expanduser(explicit)))]
    dirs = [Path(INSTALL_DIR)]
    root = checkout_root()
    if root is not None:
        dirs += [root / "target" / "release", root / "target" / "debug"]
    return dirs


def _find(names, dirs: List[Path]) -> Path:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    # Not found: the path where it is expected (the doctor reports it).
    return dirs[0] / names[0]


def nccl_plugin(plugin_dir: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """Path of the NCCL net plugin (may not exist)."""
    return _find(NCCL_PLUGIN_NAMES, plugin_dirs(plugin_dir, environ))


def ucx_plugin(plugin_dir: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """Path of the UCX transport library (may not exist)."""
    return _find(UCX_PLUGIN_NAMES, plugin_dirs(plugin_dir, environ))


def verbs_library(plugin_dir: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """Path of the verbs library (ffverbs; may not exist)."""
    return _find(VERBS_LIB_NAMES, plugin_dirs(plugin_dir, environ))


def router_socket(socket: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The router socket clients use: ``socket``, else ``$FF_ROUTER_SOCKET``,
    else the default."""
    environ = os.environ if environ is None else environ
    return socket or environ.get("FF_ROUTER_SOCKET") or DEFAULT_SOCKET


def compose_preload(existing: Optional[str], lib: str) -> str:
    """``existing`` LD_PRELOAD with ``lib`` appended (once). ld.so splits on
    spaces and colons; the existing entries are kept as they are."""
    existing = (existing or "").strip()
    if not existing:
        return lib
    if lib in existing.replace(":", " ").split():
        return existing
    return existing + ":" + lib


def env(
    nccl: bool = True,
    ucx: bool = True,
    mpi: bool = True,
    plugin_dir: Optional[str] = None,
    socket: Optional[str] = None,
    allow_fallback: bool = False,
    base: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The variables to set (not a whole environment) for FreeFlow.

    nccl: NCCL loads the FreeFlow net plugin (``NCCL_NET_PLUGIN``, its path)
        and, unless ``allow_fallback``, must use it (``NCCL_NET=FreeFlow``:
        NCCL fails loudly instead of quietly using sockets).
    ucx: UCX gets the ``ff`` transport (``LD_PRELOAD`` of libuct_ff.so,
        appended to ``base``'s LD_PRELOAD) and only it (``UCX_TLS=ff,self``;
        ``ff,tcp,self`` with ``allow_fallback``).
    mpi: Open MPI uses UCX with any transport (``OMPI_MCA_*``, the same as
        the --mca flags of :func:`mpirun_args`); only together with ``ucx``.
    plugin_dir: where the plugins are (else ``FF_PLUGIN_DIR``, the install
        directory, the checkout's build).
    socket: the router socket (else ``FF_ROUTER_SOCKET`` or the default).
    base: the environment being extended (default ``os.environ``).
    """
    base = os.environ if base is None else base
    out = {"FF_ROUTER_SOCKET": router_socket(socket, base)}
    if nccl:
        out["NCCL_NET_PLUGIN"] = str(nccl_plugin(plugin_dir, base))
        if not allow_fallback:
            out["NCCL_NET"] = NCCL_NET_NAME
    if ucx:
        out["UCX_TLS"] = UCX_TLS_FALLBACK if allow_fallback else UCX_TLS_STRICT
        out["LD_PRELOAD"] = compose_preload(base.get("LD_PRELOAD"), str(ucx_plugin(plugin_dir, base)))
        if mpi:
            for name, value in MPI_MCA:
                out["OMPI_MCA_" + name] = value
    return out


def mpirun_args(**options) -> List[str]:
    """Arguments for Open MPI's mpirun: the --mca flags and ``-x VAR=VALUE``
    for each variable of :func:`env` (same options)."""
    options.setdefault("mpi", True)
    variables = env(**options)
    args: List[str] = []
    if options.get("ucx", True) and options["mpi"]:
        for name, value in MPI_MCA:
            args += ["--mca", name, value]
    for name, value in variables.items():
        if not name.startswith("OMPI_MCA_"):
            args += ["-x", f"{name}={value}"]
    return args
