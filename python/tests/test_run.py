import os

from conftest import cli


def child_env(stdout):
    return dict(l.split("=", 1) for l in stdout.splitlines() if "=" in l)


def test_run_passes_the_environment(tmp_path):
    # An empty plugin dir: the child runs with LD_PRELOAD pointing at a
    # missing file (ld.so warns on stderr and goes on).
    base = {"PATH": os.environ["PATH"], "FOO": "bar", "LD_PRELOAD": ""}
    r = cli("run", "--plugin-dir", str(tmp_path), "--socket", "/x/ff.sock", "--", "env", env=base)
    assert r.returncode == 0, r.stderr
    e = child_env(r.stdout)
    assert e["FOO"] == "bar"
    assert e["FF_ROUTER_SOCKET"] == "/x/ff.sock"
    assert e["NCCL_NET"] == "FreeFlow"
    assert e["NCCL_NET_PLUGIN"] == f"{tmp_path}/libnccl-net-ff.so"
    assert e["UCX_TLS"] == "ff,self"
    assert e["LD_PRELOAD"] == f"{tmp_path}/libuct_ff.so"
    assert e["OMPI_MCA_pml"] == "ucx"


def test_run_options(tmp_path):
    base = {"PATH": os.environ["PATH"], "FF_ROUTER_SOCKET": "/y/ff.sock"}
    r = cli("run", "--no-nccl", "--no-ucx", "--", "env", env=base)
    e = child_env(r.stdout)
    assert e["FF_ROUTER_SOCKET"] == "/y/ff.sock"
    assert not any(k.startswith(("NCCL_", "UCX_", "OMPI_MCA_")) for k in e) and "LD_PRELOAD" not in e
    r = cli("run", "--allow-fallback", "--no-ucx", "--", "env", env=base)
    e = child_env(r.stdout)
    assert "NCCL_NET" not in e and "NCCL_NET_PLUGIN" in e


def test_run_exit_status_and_errors():
    base = {"PATH": os.environ["PATH"]}
    assert cli("run", "--no-ucx", "--", "sh", "-c", "exit 3", env=base).returncode == 3
    r = cli("run", "--no-ucx", "--", "no-such-command-ff", env=base)
    assert r.returncode == 127 and "cannot run no-such-command-ff" in r.stderr
    r = cli("run", env=base)
    assert r.returncode == 2 and "no command given" in r.stderr
