import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYDIR = Path(__file__).resolve().parents[1]  # python/
REPO = PYDIR.parent

try:
    import freeflow  # noqa: F401  (installed, e.g. pip install -e python)
except ImportError:
    sys.path.insert(0, str(PYDIR))

from freeflow import doctor  # noqa: E402


def cli(*args, env=None, **kw):
    """Runs ``python -m freeflow ARGS`` with this interpreter."""
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYDIR), e.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "freeflow", *args], capture_output=True, text=True,
                          env=e, timeout=120, **kw)


@pytest.fixture
def router(tmp_path):
    """A real ffrouter (the one the doctor would use: PATH, else the
    checkout's newest build) serving a socket in a temporary directory."""
    binary = doctor.find_router_binary()
    if binary is None:
        pytest.skip("ffrouter is not built (cargo build -p ffrouter)")
    sock = tmp_path / "ffrouter.sock"
    log = open(tmp_path / "router.log", "w")
    p = subprocess.Popen([binary, "--socket", str(sock)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{binary} did not start: {(tmp_path / 'router.log').read_text()}")
            time.sleep(0.05)
        yield str(sock)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
