"""The Kubernetes manifests in k8s/: valid against Kubernetes' schemas
(kubernetes-validate, which ships them: no network needed) and following
FreeFlow's rules (a focused check of our own, since schemas know nothing of
privileges): no privileged containers, every capability dropped, hostPath
only for the tenants' socket directories, and the job mounting only its own
tenant's, with the environment freeflow.env() gives."""

import copy
import os
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

import freeflow  # noqa: E402

K8S = Path(__file__).resolve().parents[2] / "k8s"
SOCKET_ROOT = "/run/freeflow"
TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAMESPACED = {"DaemonSet", "Job", "Service", "ConfigMap", "Deployment", "Pod"}


def load(name):
    with open(K8S / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def all_docs():
    return {p.name: load(p.name) for p in sorted(K8S.glob("*.yaml"))}


# ---- schemas

def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("FF_REQUIRE_K8S_SCHEMAS"):  # set by scripts/test.sh
            raise
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def test_manifests_validate_against_kubernetes_schemas():
    kv = kubernetes_validate()
    from kubernetes_validate.utils import all_versions
    have = all_versions()
    versions = [v for v in ("1.28.0",) if v in have] + [have[-1]]
    docs = all_docs()
    assert docs, "no manifests in k8s/"
    for name, ds in docs.items():
        for d in ds:
            for v in versions:
                try:
                    kv.validate(d, v, strict=True)
                except kv.ValidationError as e:
                    pytest.fail(f"{name}: {d['kind']} {d['metadata']['name']} against Kubernetes {v}: "
                                f"{'.'.join(map(str, e.path))}: {e.message}")


def test_schema_check_catches_mistakes():
    kv = kubernetes_validate()
    job = by_kind(load("training-job.yaml"), "Job")
    for path, value in ((("securityContext", "privilegd"), True),       # unknown field
                        (("securityContext", "runAsNonRoot"), "yes")):  # wrong type
        bad = copy.deepcopy(job)
        c = pod_spec(bad)["containers"][0]
        c[path[0]][path[1]] = value
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, kv.latest_version(), strict=True)


# ---- FreeFlow's rules

def pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def common_problems(doc):
    """Rules for every pod template: no host namespaces, nothing privileged,
    all capabilities dropped, resources set."""
    p, spec = [], pod_spec(doc)
    for ns in ("hostNetwork", "hostIPC", "hostPID"):
        if spec.get(ns):
            p.append(f"{ns} is set")
    for c in containers(spec):
        sc = c.get("securityContext", {})
        n = c["name"]
        if sc.get("privileged"):
            p.append(f"{n}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{n}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            p.append(f"{n}: capabilities are not all dropped")
        if caps.get("add"):
            p.append(f"{n}: adds capabilities {caps['add']}")
        res = c.get("resources", {})
        if "memory" not in res.get("limits", {}) or not res.get("requests"):
            p.append(f"{n}: no memory limit or no requests")
    return p


def router_tenants(ds):
    """{tenant: socket path} from the router's --tenant arguments."""
    args = pod_spec(ds)["containers"][0]["args"]
    specs = [a.split("=", 1)[1] for a in args if a.startswith("--tenant=")]
    specs += [args[i + 1] for i, a in enumerate(args) if a == "--tenant"]
    return dict(s.split("=", 1) for s in specs)


def router_problems(ds):
    p = common_problems(ds)
    spec = pod_spec(ds)
    c = spec["containers"][0]
    if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        p.append("router: root filesystem is writable")
    tenants = router_tenants(ds)
    if not tenants:
        p.append("router: no --tenant")
    host_dirs = {}
    for v in spec.get("volumes", []):
        if "hostPath" not in v:
            continue
        path = v["hostPath"]["path"]
        host_dirs[v["name"]] = path
        if not re.fullmatch(re.escape(SOCKET_ROOT) + r"/[A-Za-z0-9_-]+", path):
            p.append(f"router: hostPath {path} is not a tenant socket directory")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    for name, sock in tenants.items():
        d = f"{SOCKET_ROOT}/{name}"
        if not TENANT_RE.match(name):
            p.append(f"router: bad tenant name {name!r}")
        if sock != f"{d}/ffrouter.sock":
            p.append(f"router: tenant {name}'s socket is {sock}, not {d}/ffrouter.sock")
        vols = [v for v, path in host_dirs.items() if path == d]
        if not vols or mounts.get(vols[0]) != d:
            p.append(f"router: tenant {name}'s directory {d} is not a hostPath mounted at the same path")
    for path in host_dirs.values():
        if path.rsplit("/", 1)[1] not in tenants:
            p.append(f"router: hostPath {path} belongs to no --tenant")
    # Every tenant's counters must not be open to the tenants' pods.
    args = c.get("args", [])
    metrics = [a.split("=", 1)[1] for a in args if a.startswith("--metrics-addr=")]
    if metrics and not metrics[0].startswith(("127.", "[::1]", "localhost")):
        token = [a.split("=", 1)[1] for a in args if a.startswith("--metrics-token-file=")]
        secret_dirs = {mounts.get(v["name"]) for v in spec.get("volumes", []) if "secret" in v}
        if not token:
            p.append("router: metrics beyond loopback without --metrics-token-file")
        elif token[0].rsplit("/", 1)[0] not in secret_dirs:
            p.append(f"router: the metrics token {token[0]} is not in a mounted Secret")
    return p


def job_problems(job, tenants):
    p = common_problems(job)
    spec = pod_spec(job)
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") == 0:
        p.append("job: not runAsNonRoot")
    hostpaths = [v for v in spec.get("volumes", []) if "hostPath" in v]
    if len(hostpaths) != 1:
        p.append(f"job: {len(hostpaths)} hostPath volumes (want exactly its tenant's socket directory)")
    for v in hostpaths:
        path = v["hostPath"]["path"]
        tenant = path[len(SOCKET_ROOT) + 1:] if path.startswith(SOCKET_ROOT + "/") else None
        if tenant not in tenants:
            p.append(f"job: hostPath {path} is not a router tenant's socket directory")
        elif tenant != job["metadata"]["namespace"]:
            # Convention: a tenant is a namespace, with the same name.
            p.append(f"job: in namespace {job['metadata']['namespace']} but mounts tenant {tenant}'s socket directory")
        if v["hostPath"].get("type") != "Directory":
            p.append(f"job: hostPath {path} should be type Directory (created by the router, not by the job)")
    names = {v["name"] for v in hostpaths}
    want = freeflow.env(plugin_dir=freeflow.INSTALL_DIR, socket=f"{SOCKET_ROOT}/ffrouter.sock", base={})
    nccl_only = freeflow.env(plugin_dir=freeflow.INSTALL_DIR, socket=f"{SOCKET_ROOT}/ffrouter.sock", base={}, ucx=False)
    for c in spec["containers"]:
        n = c["name"]
        ms = [m for m in c.get("volumeMounts", []) if m["name"] in names]
        if len(ms) != 1 or ms[0]["mountPath"] != SOCKET_ROOT or not ms[0].get("readOnly"):
            p.append(f"{n}: the socket directory is not mounted once, read-only, at {SOCKET_ROOT}")
        if any(m["mountPath"].startswith(SOCKET_ROOT + "/") for m in c.get("volumeMounts", [])):
            p.append(f"{n}: mounts something below {SOCKET_ROOT}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if len(env) != len(c.get("env", [])):
            p.append(f"{n}: a variable is set twice")
        ours = {k: v for k, v in env.items() if k in want}
        if ours != want and ours != nccl_only:
            p.append(f"{n}: env {ours} is not what freeflow.env() gives: {want}")
    return p


def test_router_daemonset():
    ds = by_kind(load("ffrouter.yaml"), "DaemonSet")
    assert router_problems(ds) == []
    assert set(router_tenants(ds)) == {"team-a", "team-b"}


def test_training_job():
    tenants = router_tenants(by_kind(load("ffrouter.yaml"), "DaemonSet"))
    job = by_kind(load("training-job.yaml"), "Job")
    assert job_problems(job, tenants) == []


def test_namespaced_objects_name_their_namespace():
    for name, docs in all_docs().items():
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), name
            if d["kind"] in NAMESPACED:
                assert d["metadata"].get("namespace"), f"{name}: {d['kind']} without a namespace"


def test_hostpid_is_only_a_commented_option():
    text = (K8S / "ffrouter.yaml").read_text()
    assert "# hostPID: true" in text and '# add: ["SYS_PTRACE"]' in text


# ---- the checker catches what it should

def test_checker_catches_bad_jobs():
    tenants = router_tenants(by_kind(load("ffrouter.yaml"), "DaemonSet"))
    good = by_kind(load("training-job.yaml"), "Job")

    def broken(change):
        j = copy.deepcopy(good)
        change(pod_spec(j))
        return job_problems(j, tenants)

    def privileged(s):
        s["containers"][0]["securityContext"]["privileged"] = True

    def add_cap(s):
        s["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]

    def other_tenant(s):
        s["volumes"][0]["hostPath"]["path"] = "/run/freeflow/team-b"

    def whole_root(s):
        s["volumes"][0]["hostPath"]["path"] = "/run/freeflow"

    def extra_hostpath(s):
        s["volumes"].append({"name": "host", "hostPath": {"path": "/"}})

    def root_user(s):
        s["securityContext"]["runAsNonRoot"] = False

    def writable(s):
        s["containers"][0]["volumeMounts"][0]["readOnly"] = False

    def lenient_nccl(s):
        s["containers"][0]["env"] = [e for e in s["containers"][0]["env"] if e["name"] != "NCCL_NET"]

    def host_ipc(s):
        s["hostIPC"] = True

    for change in (privileged, add_cap, other_tenant, whole_root, extra_hostpath, root_user, writable,
                   lenient_nccl, host_ipc):
        assert broken(change), change.__name__


def test_checker_catches_bad_routers():
    good = by_kind(load("ffrouter.yaml"), "DaemonSet")

    def broken(change):
        d = copy.deepcopy(good)
        change(pod_spec(d))
        return router_problems(d)

    def privileged(s):
        s["containers"][0]["securityContext"]["privileged"] = True

    def no_drop(s):
        del s["containers"][0]["securityContext"]["capabilities"]["drop"]

    def writable_root(s):
        s["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False

    def host_etc(s):
        s["volumes"].append({"name": "etc", "hostPath": {"path": "/etc"}})

    def unmounted_tenant(s):
        s["containers"][0]["args"] += ["--tenant", "team-c=/run/freeflow/team-c/ffrouter.sock"]

    def host_pid(s):
        s["hostPID"] = True

    def open_metrics(s):
        s["containers"][0]["args"] = [a for a in s["containers"][0]["args"] if not a.startswith("--metrics-token-file")]

    for change in (privileged, no_drop, writable_root, host_etc, unmounted_tenant, host_pid, open_metrics):
        assert broken(change), change.__name__


# ---- the same image and flags as the Docker demo and tests (docker/flags.sh)

def docker_flags():
    """docker/flags.sh's KEY="value" lines, as a dict."""
    flags = {}
    for line in (K8S.parent / "docker" / "flags.sh").read_text().splitlines():
        m = re.fullmatch(r'(FF_[A-Z_]+)="([^"]*)"', line.strip())
        if m:
            flags[m.group(1)] = m.group(2)
    return flags


def run_flags(s):
    """'--user 0:0 --cap-drop ALL --read-only ...' -> {'--user': '0:0', ...}
    (a flag without a value maps to True)."""
    words, out, i = s.split(), {}, 0
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[words[i]] = words[i + 1]
            i += 2
        else:
            out[words[i]] = True
            i += 1
    return out


def docker_problems(sc, flags, who):
    """What differs between a container's Kubernetes securityContext
    (merged with its pod's) and its `docker run` flags."""
    p = []
    user = flags.get("--user", "")
    uid, _, gid = user.partition(":")
    if str(sc.get("runAsUser")) != uid or str(sc.get("runAsGroup")) != gid:
        p.append(f"{who}: Kubernetes runs it as {sc.get('runAsUser')}:{sc.get('runAsGroup')}, Docker as {user}")
    if (sc.get("capabilities", {}).get("drop") == ["ALL"]) != (flags.get("--cap-drop") == "ALL"):
        p.append(f"{who}: capabilities dropped in one and not the other")
    if (sc.get("allowPrivilegeEscalation") is False) != (flags.get("--security-opt") == "no-new-privileges"):
        p.append(f"{who}: allowPrivilegeEscalation false vs --security-opt no-new-privileges differ")
    if bool(sc.get("readOnlyRootFilesystem")) != bool(flags.get("--read-only")):
        p.append(f"{who}: read-only root in one and not the other")
    return p


def test_docker_flags_match_the_manifests():
    f = docker_flags()
    ds = by_kind(load("ffrouter.yaml"), "DaemonSet")
    spec = pod_spec(ds)
    c = spec["containers"][0]
    assert c["image"] == f["FF_ROUTER_IMAGE"], "the DaemonSet and docker/flags.sh name different router images"
    assert c["command"] == ["ffrouter"]
    sc = {**spec.get("securityContext", {}), **c["securityContext"]}
    problems = docker_problems(sc, run_flags(f["FF_ROUTER_RUN_FLAGS"]), "router")
    # Socket directories: the DaemonSet's tenants live at ROOT/T, as in Docker.
    for t, sock in router_tenants(ds).items():
        if sock != f"{f['FF_ROUTER_SOCKET_ROOT']}/{t}/ffrouter.sock":
            problems.append(f"router: tenant {t}'s socket {sock} is not under {f['FF_ROUTER_SOCKET_ROOT']}")
    if spec.get("hostIPC") or spec.get("hostNetwork"):
        problems.append("router: host IPC or network, which Docker does not give it")

    job = by_kind(load("training-job.yaml"), "Job")
    jspec = pod_spec(job)
    for w in jspec["containers"]:
        wsc = {**jspec.get("securityContext", {}), **w["securityContext"]}
        problems += docker_problems(wsc, run_flags(f["FF_RANK_RUN_FLAGS"]), w["name"])
        mounts = [m for m in w["volumeMounts"] if m["name"] == "freeflow"]
        if [m["mountPath"] for m in mounts] != [f["FF_RANK_SOCKET_DIR"]] or \
                bool(mounts[0].get("readOnly")) != (f["FF_RANK_SOCKET_MOUNT_OPTS"] == "ro"):
            problems.append(f"{w['name']}: the socket directory is not mounted as in Docker")
    if run_flags(f["FF_RANK_RUN_FLAGS"]).get("--ipc") != "private" or jspec.get("hostIPC"):
        problems.append("ranks: Docker's --ipc private is a pod's own IPC namespace (no hostIPC)")
    # The training image is the user's, built FROM the rank image.
    if f"FROM {f['FF_RANK_IMAGE']}" not in (K8S / "training-job.yaml").read_text():
        problems.append(f"training-job.yaml does not say its image is built FROM {f['FF_RANK_IMAGE']}")
    assert problems == []


def test_docker_scripts_use_the_flags():
    """Every `docker run` of the demo and tests takes its image and flags
    from docker/flags.sh."""
    root = K8S.parent
    runs = 0
    for path in [root / "testkit" / "docker_hosts.sh", root / "testkit" / "docker_mpi.sh",
                 root / "bench" / "docker_bench.sh", root / "scripts" / "demo.sh"]:
        text = path.read_text()
        for m in re.finditer(r"docker run[^\n]*(?:\\\n[^\n]*)*", text):
            runs += 1
            cmd = m.group(0)
            assert ("router_flags" in cmd and "$FF_ROUTER_IMAGE" in text) or \
                   ("rank_flags" in cmd and "$FF_RANK_IMAGE" in text), f"{path.name}: {cmd}"
    assert runs >= 4


def test_docker_flag_checker_catches_differences():
    f = docker_flags()
    sc = {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False,
          "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert docker_problems(sc, run_flags(f["FF_ROUTER_RUN_FLAGS"]), "r") == []
    for k, v in (("runAsUser", 1000), ("readOnlyRootFilesystem", False), ("allowPrivilegeEscalation", True)):
        assert docker_problems({**sc, k: v}, run_flags(f["FF_ROUTER_RUN_FLAGS"]), "r"), k
    assert docker_problems(sc, run_flags("--user 0:0 --read-only --security-opt no-new-privileges"), "r")
