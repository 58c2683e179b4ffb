import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from conftest import cli
from freeflow import doctor, environment


def libc_path():
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if "/libc.so" in path or "/libc-" in path:
            return path
    pytest.skip("cannot find libc's path")


def built_dir():
    """The build directory of the ffrouter the doctor uses, if the plugins
    were built there too (CI builds everything first)."""
    binary = doctor.find_router_binary()
    if binary is None:
        return None
    d = Path(binary).resolve().parent
    have = (d / "libuct_ff.so").is_file() and any((d / n).is_file() for n in environment.NCCL_PLUGIN_NAMES)
    return d if have else None


def ucx_113():
    v = doctor.ucx_version()
    return v is not None and tuple(v[:2]) == doctor.UCX_SERIES


# ---- router socket

def test_missing_socket_fails_clearly(tmp_path):
    sock = str(tmp_path / "ffrouter.sock")
    c = doctor.check_socket(sock, doctor.find_router_binary())
    assert c.status == doctor.FAIL
    assert c.detail == f"no socket at {sock}"
    assert "ffrouter --socket" in c.fix and "FF_ROUTER_SOCKET" in c.fix


def test_doctor_cli_exits_non_zero_on_a_missing_socket(tmp_path):
    sock = str(tmp_path / "ffrouter.sock")
    r = cli("doctor", "--no-nccl", "--no-ucx", env={"FF_ROUTER_SOCKET": sock, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"router socket  FAIL    no socket at {sock}" in r.stdout
    assert "1 of 1 checks failed." in r.stdout


def test_not_a_socket(tmp_path):
    f = tmp_path / "ffrouter.sock"
    f.write_text("")
    c = doctor.check_socket(str(f))
    assert c.status == doctor.FAIL and "not a socket" in c.detail


def test_stale_socket(tmp_path):
    path = str(tmp_path / "ffrouter.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # bound, never listened: what a dead router leaves
    c = doctor.check_socket(path)
    assert c.status == doctor.FAIL and "nobody is listening" in c.detail


def test_listening_socket_without_router_binary_is_a_warning(tmp_path):
    path = str(tmp_path / "ffrouter.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    try:
        c = doctor.check_socket(path, router_bin=None)
    finally:
        s.close()
    assert c.status == doctor.WARN and "accepts connections" in c.detail


def test_real_router(router):
    c = doctor.check_socket(router, doctor.find_router_binary())
    assert c.status == doctor.OK, c
    assert "router answered" in c.detail
    r = cli("doctor", "--no-nccl", "--no-ucx", "--socket", router)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FreeFlow is ready." in r.stdout


def test_something_else_listening_is_not_a_router(tmp_path):
    binary = doctor.find_router_binary()
    if binary is None:
        pytest.skip("ffrouter is not built")
    path = str(tmp_path / "ffrouter.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    import threading

    def serve():
        conn, _ = s.accept()  # the doctor's connect() probe
        conn.close()
        conn, _ = s.accept()  # ffrouter stats
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        c = doctor.check_socket(path, binary)
    finally:
        s.close()
    assert c.status == doctor.FAIL and "ffrouter stats failed" in c.detail


def test_full_doctor_against_a_real_router(router):
    d = built_dir()
    if d is None or not ucx_113():
        pytest.skip("needs the plugins built next to ffrouter and UCX 1.13")
    r = cli("doctor", "--socket", router, "--plugin-dir", str(d))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("router socket", "NCCL plugin", "UCX version", "UCX transport"):
        assert any(l.startswith(name) and " OK " in l for l in r.stdout.splitlines()), r.stdout
    assert "UCX lists transport ff" in r.stdout


# ---- plugins

def test_missing_plugins(tmp_path):
    r = cli("doctor", "--plugin-dir", str(tmp_path), "--socket", str(tmp_path / "s"))
    assert r.returncode == 1
    assert f"looked in {tmp_path}" in r.stdout
    assert "cargo build --release -p nccl-net-plugin" in r.stdout
    assert "cargo build --release -p ucx-transport" in r.stdout


def test_nccl_plugin_that_does_not_load(tmp_path):
    p = tmp_path / "libnccl-net-ff.so"
    p.write_text("not an ELF file\n")
    c = doctor.check_nccl_plugin(p, [tmp_path])
    assert c.status == doctor.FAIL and "does not load" in c.detail


def test_nccl_plugin_without_the_tables(tmp_path):
    p = tmp_path / "libnccl-net-ff.so"
    shutil.copy(libc_path(), p)
    c = doctor.check_nccl_plugin(p, [tmp_path])
    assert c.status == doctor.FAIL and "exports no ncclNetPlugin" in c.detail


def test_built_nccl_plugin_exports_v8_to_v12():
    d = built_dir()
    if d is None:
        pytest.skip("plugins not built")
    c = doctor.check_nccl_plugin(environment.nccl_plugin(str(d)), [d])
    assert c.status == doctor.OK and "ABI v8..v12" in c.detail, c


def test_ucx_plugin_that_cannot_be_preloaded(tmp_path):
    if shutil.which("ucx_info") is None:
        pytest.skip("no ucx_info")
    p = tmp_path / "libuct_ff.so"
    p.write_text("not an ELF file\n")
    c = doctor.check_ucx_plugin(p, [tmp_path], str(tmp_path / "s"))
    assert c.status == doctor.FAIL and "ld.so" in c.detail, c


def test_ucx_plugin_without_a_router(tmp_path):
    d = built_dir()
    if d is None or not ucx_113() or shutil.which("ucx_info") is None:
        pytest.skip("needs the built plugin, UCX 1.13 and ucx_info")
    c = doctor.check_ucx_plugin(d / "libuct_ff.so", [d], str(tmp_path / "none.sock"))
    assert c.status == doctor.FAIL and "could not reach the router" in c.detail, c


# ---- UCX version

def test_ucx_version_is_checked(monkeypatch):
    monkeypatch.setattr(doctor, "ucx_version", lambda: (1, 16, 0))
    c = doctor.check_ucx_version()
    assert c.status == doctor.FAIL and "UCX 1.16.0; libuct_ff.so is built for UCX 1.13.x" in c.detail
    monkeypatch.setattr(doctor, "ucx_version", lambda: None)
    c = doctor.check_ucx_version()
    assert c.status == doctor.FAIL and "UCX not found" in c.detail and "ucx-utils" in c.fix
    monkeypatch.setattr(doctor, "ucx_version", lambda: (1, 13, 1))
    assert doctor.check_ucx_version().status == doctor.OK


def test_ucx_version_of_this_machine():
    if shutil.which("ucx_info") is None:
        pytest.skip("no ucx_info")
    v = doctor.ucx_version()
    assert v is not None and len(v) == 3


def test_report_table():
    import io
    out = io.StringIO()
    rc = doctor.report([doctor.Check("a", doctor.OK, "fine"), doctor.Check("longer", doctor.FAIL, "broken", "fix it")], out)
    assert rc == 1
    assert out.getvalue().splitlines()[:4] == [
        "CHECK   RESULT  DETAIL",
        "a       OK      fine",
        "longer  FAIL    broken",
        "                -> fix it",
    ]


# ---- verbs

def test_missing_verbs_library(tmp_path):
    r = cli("doctor", "--verbs", "--no-nccl", "--no-ucx", "--plugin-dir", str(tmp_path), "--socket", str(tmp_path / "s"))
    assert r.returncode == 1
    assert "verbs device" in r.stdout and "cargo build --release -p ffverbs" in r.stdout, r.stdout


def test_verbs_device_against_a_real_router(router, tmp_path):
    binary = doctor.find_router_binary()
    lib = Path(binary).resolve().parent / "libffverbs.so"
    if not lib.is_file():
        pytest.skip("ffverbs not built next to ffrouter")
    c = doctor.check_verbs(lib, [lib.parent], router)
    assert c.status == doctor.OK and "ff0 listed and opened" in c.detail, c
    c = doctor.check_verbs(lib, [lib.parent], str(tmp_path / "no-router.sock"))
    assert c.status == doctor.FAIL and "does not open" in c.detail, c


def test_rdmacm_library_beside_the_verbs_library(router, tmp_path):
    binary = doctor.find_router_binary()
    built = Path(binary).resolve().parent
    if not (built / "libffverbs.so").is_file() or not (built / "libffrdmacm.so").is_file():
        pytest.skip("ffverbs or ffrdmacm not built next to ffrouter")
    # Installed as applications find them: both in one directory.
    lib = tmp_path / "verbs"
    lib.mkdir()
    (lib / "libibverbs.so.1").symlink_to(built / "libffverbs.so")
    c = doctor.check_rdmacm(lib / "libibverbs.so.1", router)
    assert c.status == doctor.WARN and "librdmacm.so.1" in c.detail and "cargo build --release -p ffrdmacm" in c.fix, c
    (lib / "librdmacm.so.1").symlink_to(built / "libffrdmacm.so")
    c = doctor.check_rdmacm(lib / "libibverbs.so.1", router)
    assert c.status == doctor.OK and "lists ff0" in c.detail, c
    # Debian's librdmacm in its place lists no ff0.
    debian = Path("/usr/lib/x86_64-linux-gnu/librdmacm.so.1")
    if debian.is_file():
        (lib / "librdmacm.so.1").unlink()
        (lib / "librdmacm.so.1").symlink_to(debian)
        c = doctor.check_rdmacm(lib / "libibverbs.so.1", router)
        assert c.status == doctor.FAIL and "not FreeFlow's librdmacm" in c.detail, c


def test_uverbs_node(tmp_path):
    """UCX sees ff0 only through a character device it may open read-write;
    a missing node or a plain file is a warning that says what to do."""
    node = tmp_path / "uverbs_ff0"
    c = doctor.check_uverbs_node(str(node))
    assert c.status == doctor.WARN and "UCX will not list ff0" in c.detail and "tools/ffuverbs" in c.fix, c
    node.write_text("")
    c = doctor.check_uverbs_node(str(node))
    assert c.status == doctor.WARN and "not a character device" in c.detail, c
    node.unlink()
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    c = doctor.check_uverbs_node(str(node))
    assert c.status == doctor.OK and "UCX lists ff0" in c.detail, c
