"""FreeFlow from Python: the environment for NCCL, UCX and Open MPI
(:func:`env`, :func:`mpirun_args`), a readiness check (``python -m freeflow
doctor``) and a launcher (``python -m freeflow run -- CMD``)."""

from .environment import (
    DEFAULT_SOCKET,
    INSTALL_DIR,
    compose_preload,
    env,
    mpirun_args,
    nccl_plugin,
    plugin_dirs,
    router_socket,
    ucx_plugin,
)

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_SOCKET", "INSTALL_DIR", "compose_preload", "env", "mpirun_args",
    "nccl_plugin", "plugin_dirs", "router_socket", "ucx_plugin",
]
