"""FreeFlow between Docker containers (testkit/docker_stream.sh): the
router container (k8s/ffrouter.yaml's image and flags, docker/flags.sh)
and two training containers (nobody, no capabilities, private IPC, only
their tenant's socket directory) exchange a checksummed stream, on one
host and across two emulated hosts (two router containers on a Docker
network); and Open MPI (mpirun entering the containers through
tools/ffrsh, i.e. docker exec) over the same (testkit/docker_mpi.sh);
and Docker's default seccomp profile lets a rank container call
futex_waitv, which ffcore's event descriptors sleep in. Skipped, saying why, only where Docker cannot be installed or started
(scripts/docker.sh ensure exits 77); the first run builds the base image
(debootstrap, about a minute here, cached in /var/cache/freeflow)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINS = ("ffrouter", "ffbench", "libuct_ff.so", "libnccl_net_ff.so")


def bin_dir():
    """FF_BIN_DIR, else the cargo target directory's debug, else release
    build that has every binary the images need."""
    if os.environ.get("FF_BIN_DIR"):
        return Path(os.environ["FF_BIN_DIR"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        if all((target / profile / b).exists() for b in BINS):
            return target / profile
    pytest.skip(f"SKIP: FreeFlow is not built in {target} (cargo build --workspace)")


def run(*cmd, timeout):
    return subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def images():
    d = bin_dir()
    r = run(REPO / "scripts/docker.sh", "ensure", timeout=600)
    if r.returncode == 77:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    # The first run debootstraps the base image (minutes).
    r = run(REPO / "scripts/docker.sh", "images", d, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("hosts", [1, 2])
def test_checksummed_stream_between_docker_containers(images, hosts):
    r = run(REPO / "testkit/docker_stream.sh", "--hosts", hosts, "--iters", 24, "--max-size", 1 << 20, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("RESULT mode=check") == 2 and "ok=0" not in out, out
    assert "== OK" in out


def test_open_mpi_between_docker_containers_entered_by_the_rsh_agent(images):
    """mpirun enters two rank containers with tools/ffrsh (docker exec, as
    mpi-operator uses kubectl exec); ffmpi's exchanges go through ff."""
    import shutil
    if not (shutil.which("mpicc") and shutil.which("mpirun")):
        pytest.skip("SKIP: mpicc/mpirun not installed (scripts/deps.sh installs them)")
    r = run(REPO / "testkit/docker_mpi.sh", timeout=400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "FFMPI OK rank 0/2" in out and "FFMPI OK rank 1/2" in out and "== OK" in out, out


# futex_waitv(NULL, 0, 0, NULL, 0): EINVAL where the call is allowed,
# EPERM where a seccomp profile denies it, ENOSYS before Linux 5.16.
FUTEX_WAITV_PROBE = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
rc = libc.syscall(ctypes.c_long(449), None, ctypes.c_uint(0), ctypes.c_uint(0), None, ctypes.c_int(0))
print("futex_waitv", errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()) if rc < 0 else rc)
"""


def test_docker_default_seccomp_profile_allows_futex_waitv(images, tmp_path):
    """ffcore's event descriptors (UCP's wakeup mode on ff) sleep in
    futex_waitv (Linux 5.16), which older seccomp profiles deny: in a rank
    container with the rank flags and Docker's default profile the call
    must be allowed (EINVAL for an empty list, not EPERM). A profile that
    denies it shows that the probe tells the two apart."""
    r = run("docker", "info", "--format", "{{json .SecurityOptions}}", timeout=60)
    assert "name=seccomp,profile=default" in r.stdout, r.stdout + r.stderr

    def probe(*opts):
        r = run("bash", "-c", '. docker/flags.sh; docker run --rm $FF_RANK_RUN_FLAGS --network none '
                '"$@" "$FF_RANK_IMAGE" python3 -c "$0"', FUTEX_WAITV_PROBE, *opts, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.strip()

    assert probe() == "futex_waitv EINVAL"
    deny = tmp_path / "deny-futex-waitv.json"
    deny.write_text('{"defaultAction": "SCMP_ACT_ALLOW", '
                    '"syscalls": [{"names": ["futex_waitv"], "action": "SCMP_ACT_ERRNO"}]}')
    assert probe("--security-opt", f"seccomp={deny}") == "futex_waitv EPERM"
