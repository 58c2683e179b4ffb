"""The PyTorch example (examples/pytorch/train_cpu.py through
examples/launch.sh) trains across two containers over UCX tcp and over
FreeFlow: the loss drops, the replicas end with the same weights (the
script checks both), UCX's lanes are the transport's (the launcher checks),
and both transports give the same losses, bit for bit (two ranks' sums are
exact whichever way they travel). A small model and few steps: this
checks behaviour and times nothing. Skipped, saying why, where Debian's
python3-torch, python3-mpi4py and python3-sklearn are not installed
(examples/pytorch/setup.sh installs them: about 115 MB, not part of
scripts/deps.sh) or without root."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bin_dir():
    """FF_BIN_DIR, else the cargo target directory's debug or release build
    that has the router and the UCX transport."""
    if os.environ.get("FF_BIN_DIR"):
        return Path(os.environ["FF_BIN_DIR"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        if all((target / profile / b).exists() for b in ("ffrouter", "libuct_ff.so")):
            return target / profile
    pytest.skip(f"SKIP: FreeFlow is not built in {target} (cargo build --workspace)")


def test_pytorch_example_trains_over_tcp_and_ff_with_the_same_losses():
    if os.geteuid() != 0:
        pytest.skip("SKIP: needs root (network namespaces)")
    if not (shutil.which("mpirun") and shutil.which("ucx_info")):
        pytest.skip("SKIP: Open MPI or UCX not installed (scripts/deps.sh installs them)")
    r = subprocess.run(["/usr/bin/python3", "-c", "import torch, mpi4py, sklearn"], capture_output=True)
    if r.returncode != 0:
        pytest.skip("SKIP: Debian's python3-torch, python3-mpi4py, python3-sklearn are not installed "
                    "(examples/pytorch/setup.sh installs them, about 115 MB)")
    r = subprocess.run(
        [REPO / "examples/launch.sh", "--no-wait", "--timeout", "240", "--bin", bin_dir(), "--",
         "/usr/bin/python3", REPO / "examples/pytorch/train_cpu.py", "--steps", "40", "--width", "256"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    res = {m.group(1): m.group(0) for m in re.finditer(r"^RESULT label=(\S+) .*$", r.stdout, re.M)}
    assert set(res) == {"tcp", "ff"}, out
    assert "tag(ff/router)" in res["ff"] and "tag(tcp/eth0)" in res["tcp"], out

    def losses(line):
        return re.search(r"loss_first=(\S+) loss_last=(\S+)", line).groups()

    first, last = losses(res["ff"])
    assert float(last) < 0.5 * float(first), out
    assert losses(res["tcp"]) == (first, last), out
