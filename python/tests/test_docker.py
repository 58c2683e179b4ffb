"""FreeFlow between Docker containers (testkit/docker_stream.sh): the
router container (k8s/ffrouter.yaml's image and flags, docker/flags.sh)
and two training containers (nobody, no capabilities, private IPC, only
their tenant's socket directory) exchange a checksummed stream, on one
host and across two emulated hosts (two router containers on a Docker
network); and Open MPI (mpirun entering the containers through
tools/ffrsh, i.e. docker exec) over the same (testkit/docker_mpi.sh);
the rank image's verbs and rdma_cm libraries in a training container;
and Docker's default seccomp profile lets a rank container call
futex_waitv, which ffcore's event descriptors sleep in. Skipped, saying why, only where Docker cannot be installed or started
(scripts/docker.sh ensure exits 77); the first run builds the base image
(debootstrap, about a minute here, cached in /var/cache/freeflow)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINS = ("ffrouter", "ffbench", "libuct_ff.so", "libnccl_net_ff.so", "libffverbs.so", "libffrdmacm.so")


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


def test_verbs_and_rdma_cm_from_the_rank_image_in_a_training_container(images, tmp_path):
    """The rank image's verbs and rdma_cm libraries (ffverbs, ffrdmacm in
    /usr/local/lib/freeflow/verbs), from a training container (nobody, no
    capability, no network but loopback) through the router container:
    the doctor finds ff0 and the rdma_cm library, and ffcmcheck (built
    here against Debian's headers) connects, rejects, sends and checks
    bytes, and disconnects over them."""
    import shutil
    if not shutil.which("cc") or not Path("/usr/include/rdma/rdma_cma.h").is_file():
        pytest.skip("SKIP: no C compiler or librdmacm-dev (scripts/deps.sh installs them)")
    prog = tmp_path / "ffcmcheck"
    r = run("cc", "-O2", "-Wall", "-o", prog, REPO / "ffrdmacm/tests/c/ffcmcheck.c", "-lrdmacm", "-libverbs", timeout=120)
    assert r.returncode == 0, r.stderr
    prog.chmod(0o755)
    tmp_path.chmod(0o755)
    r = run(REPO / "testkit/docker_verbs.sh", prog, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "OK accepted: private data both ways" in out and "== OK" in out, out


# What the Docker tests' containers run under: Docker's default seccomp
# profile (no --security-opt seccomp=...). ffcore calls futex_waitv (Linux
# 5.16; UCX's wakeup mode sleeps in it), memfd_create with sealing and
# eventfd2; a profile older than the syscall answers ENOSYS or EPERM for it.
SYSCALL_PROBE = r"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, nr, *args):
    r = libc.syscall(nr, *args)
    e = ctypes.get_errno() if r < 0 else 0
    print(name, r if r >= 0 else -1, errno.errorcode.get(e, e) if e else "ok")
probe("futex_waitv", 449, None, 0, 0, None, 0)          # no waiters: EINVAL if allowed
probe("memfd_create", 319, b"ff-probe", 0x0001 | 0x0002)  # MFD_CLOEXEC | MFD_ALLOW_SEALING
probe("eventfd2", 290, 0, 0o2000000)                       # EFD_CLOEXEC
"""


def docker_flags():
    """docker/flags.sh's KEY="value" lines, as a dict."""
    f = {}
    for line in (REPO / "docker" / "flags.sh").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            f[k.strip()] = v.strip().strip('"')
    return f


def probe_syscalls(who, *opts):
    """SYSCALL_PROBE in a container with docker/flags.sh's flags for WHO
    (RANK or ROUTER): {name: "ok" or the errno's name}."""
    f = docker_flags()
    r = run("docker", "run", "--rm", "--network", "none", *f[f"FF_{who}_RUN_FLAGS"].split(), *opts,
            f[f"FF_{who}_IMAGE"], "python3", "-c", SYSCALL_PROBE, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return {l.split()[0]: l.split()[2] for l in r.stdout.splitlines() if len(l.split()) == 3}


@pytest.mark.parametrize("who", ["RANK", "ROUTER"])
def test_dockers_default_seccomp_profile_lets_ffcore_make_its_system_calls(images, who):
    r = run("docker", "info", "--format", "{{json .SecurityOptions}}", timeout=60)
    assert "name=seccomp,profile=default" in r.stdout, r.stdout + r.stderr
    got = probe_syscalls(who)
    assert got.get("futex_waitv") == "EINVAL", f"futex_waitv is refused in the container (UCX wakeup would fail): {got}"
    assert got.get("memfd_create") == "ok" and got.get("eventfd2") == "ok", got


def test_the_seccomp_probe_tells_a_refused_call_apart(images, tmp_path):
    deny = tmp_path / "deny-futex-waitv.json"
    deny.write_text('{"defaultAction": "SCMP_ACT_ALLOW", '
                    '"syscalls": [{"names": ["futex_waitv"], "action": "SCMP_ACT_ERRNO"}]}')
    assert probe_syscalls("RANK", "--security-opt", f"seccomp={deny}").get("futex_waitv") == "EPERM"
