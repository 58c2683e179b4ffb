import shlex

import freeflow
from freeflow import environment


def plugins(tmp_path, nccl="libnccl-net-ff.so", ucx="libuct_ff.so"):
    for name in filter(None, (nccl, ucx)):
        (tmp_path / name).write_bytes(b"")
    return str(tmp_path)


def test_default_env_is_strict_and_complete(tmp_path):
    d = plugins(tmp_path)
    e = freeflow.env(plugin_dir=d, base={})
    assert e == {
        "FF_ROUTER_SOCKET": "/run/freeflow/ffrouter.sock",
        "NCCL_NET_PLUGIN": f"{d}/libnccl-net-ff.so",
        "NCCL_NET": "FreeFlow",
        "UCX_TLS": "ff,self",
        "LD_PRELOAD": f"{d}/libuct_ff.so",
        "OMPI_MCA_pml": "ucx",
        "OMPI_MCA_pml_ucx_tls": "any",
        "OMPI_MCA_pml_ucx_devices": "any",
        "OMPI_MCA_hwloc_base_binding_policy": "none",
    }
    assert all(isinstance(v, str) for v in e.values())


def test_allow_fallback_drops_nccl_net_and_widens_ucx_tls(tmp_path):
    e = freeflow.env(plugin_dir=plugins(tmp_path), base={}, allow_fallback=True)
    assert "NCCL_NET" not in e
    assert e["UCX_TLS"] == "ff,tcp,self"


def test_parts_can_be_left_out(tmp_path):
    d = plugins(tmp_path)
    assert set(freeflow.env(plugin_dir=d, base={}, ucx=False)) == {"FF_ROUTER_SOCKET", "NCCL_NET_PLUGIN", "NCCL_NET"}
    e = freeflow.env(plugin_dir=d, base={}, nccl=False, mpi=False)
    assert set(e) == {"FF_ROUTER_SOCKET", "UCX_TLS", "LD_PRELOAD"}
    # The MCA settings only make sense with the UCX transport.
    assert not any(k.startswith("OMPI_") for k in freeflow.env(plugin_dir=d, base={}, ucx=False, mpi=True))


def test_socket_from_argument_then_environment():
    assert freeflow.env(base={"FF_ROUTER_SOCKET": "/s/a.sock"})["FF_ROUTER_SOCKET"] == "/s/a.sock"
    assert freeflow.env(base={"FF_ROUTER_SOCKET": "/s/a.sock"}, socket="/s/b.sock")["FF_ROUTER_SOCKET"] == "/s/b.sock"


def test_ld_preload_is_appended_once():
    lib = "/opt/ff/libuct_ff.so"
    assert freeflow.compose_preload(None, lib) == lib
    assert freeflow.compose_preload("", lib) == lib
    assert freeflow.compose_preload("/lib/a.so", lib) == "/lib/a.so:" + lib
    assert freeflow.compose_preload("/lib/a.so /lib/b.so", lib) == "/lib/a.so /lib/b.so:" + lib
    assert freeflow.compose_preload("/lib/a.so:" + lib, lib) == "/lib/a.so:" + lib
    assert freeflow.compose_preload(lib + " /lib/a.so", lib) == lib + " /lib/a.so"


def test_env_appends_to_the_base_ld_preload(tmp_path):
    d = plugins(tmp_path)
    e = freeflow.env(plugin_dir=d, base={"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    assert e["LD_PRELOAD"] == f"/usr/lib/libjemalloc.so.2:{d}/libuct_ff.so"


def test_plugin_dir_order(tmp_path, monkeypatch):
    # FF_PLUGIN_DIR is the only place looked at when set; an explicit
    # plugin_dir beats it.
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    plugins(a)
    assert freeflow.plugin_dirs(environ={"FF_PLUGIN_DIR": str(a)}) == [a]
    assert freeflow.plugin_dirs(str(b), environ={"FF_PLUGIN_DIR": str(a)}) == [b]
    assert freeflow.nccl_plugin(environ={"FF_PLUGIN_DIR": str(a)}) == a / "libnccl-net-ff.so"
    # Without them: the install directory, then the checkout's builds.
    dirs = freeflow.plugin_dirs(environ={})
    assert dirs[0] == environment.Path("/usr/local/lib/freeflow")
    root = environment.checkout_root()
    assert root is not None  # the tests run from a checkout
    assert dirs[1:] == [root / "target" / "release", root / "target" / "debug"]


def test_plugin_paths_are_absolute(tmp_path, monkeypatch):
    plugins(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    e = freeflow.env(plugin_dir=tmp_path.name, base={})
    assert e["NCCL_NET_PLUGIN"] == f"{tmp_path}/libnccl-net-ff.so"
    assert e["LD_PRELOAD"] == f"{tmp_path}/libuct_ff.so"


def test_cargo_names_are_found_and_missing_files_point_at_the_first_dir(tmp_path):
    plugins(tmp_path, nccl="libnccl_net_ff.so", ucx=None)
    assert freeflow.nccl_plugin(str(tmp_path)) == tmp_path / "libnccl_net_ff.so"
    assert freeflow.ucx_plugin(str(tmp_path)) == tmp_path / "libuct_ff.so"  # expected place, not there


def test_first_directory_with_the_file_wins(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    plugins(b)
    monkeypatch.setattr(environment, "plugin_dirs", lambda *_: [a, b])
    assert freeflow.nccl_plugin() == b / "libnccl-net-ff.so"
    (a / "libnccl_net_ff.so").write_bytes(b"")
    assert freeflow.nccl_plugin() == a / "libnccl_net_ff.so"


def test_mpirun_args(tmp_path):
    d = plugins(tmp_path)
    args = freeflow.mpirun_args(plugin_dir=d, base={"LD_PRELOAD": "/x.so"})
    assert args[:12] == ["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any",
                         "--mca", "hwloc_base_binding_policy", "none"]
    exported = dict(args[i + 1].split("=", 1) for i in range(12, len(args), 2) if args[i] == "-x")
    assert exported["UCX_TLS"] == "ff,self"
    assert exported["LD_PRELOAD"] == f"/x.so:{d}/libuct_ff.so"
    assert exported["NCCL_NET"] == "FreeFlow"
    assert not any(k.startswith("OMPI_") for k in exported)
    assert len(args) == 12 + 2 * len(exported)
    # NCCL only: no MCA flags.
    assert "--mca" not in freeflow.mpirun_args(plugin_dir=d, base={}, ucx=False)


def test_cli_env_formats(tmp_path):
    from conftest import cli
    d = plugins(tmp_path)
    r = cli("env", "--plugin-dir", d, "--socket", "/s/x y.sock", env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "export FF_ROUTER_SOCKET='/s/x y.sock'" in r.stdout.splitlines()
    r = cli("env", "--format", "mpirun", "--plugin-dir", d, env={"PATH": "/usr/bin:/bin"})
    assert shlex.split(r.stdout) == freeflow.mpirun_args(plugin_dir=d, base={})
