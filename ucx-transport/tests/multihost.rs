//! The ff transport between two hosts: each host a network namespace with
//! its own router (routers linked over TCP on a veth) and container bridge;
//! an Open MPI job with one rank in a container on each host, UCX_TLS=ff,self
//! (so nothing but the routers can carry the ranks' traffic). mpirun runs in
//! host 0's namespace and enters the containers through tools/ffrsh. Needs
//! root, UCX 1.13, Open MPI and a built workspace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fftestkit::hosts::TwoHosts;
use fftestkit::{bin_dir, root};

fn lib() -> PathBuf {
    let cands = [bin_dir().join("deps/libuct_ff.so"), bin_dir().join("libuct_ff.so")];
    let newest = cands.iter().filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone()))).max();
    newest.map(|(_, p)| p).expect("libuct_ff.so not built (cargo build -p ucx-transport)")
}

/// A long-lived container on one host that ffrsh can enter.
struct Pod {
    child: Child,
}

impl Pod {
    fn start(h: &TwoHosts, host: usize, name: &str, ip: &str, rsh_dir: &Path) -> Pod {
        let pidfile = rsh_dir.join(format!("{name}.pid"));
        let child = Command::new(root().join("tools/ffcontainer"))
            .args(["run", "--name", name, "--ip", ip, "--bridge", &h.bridge, "--host-netns", &h.ns[host], "--pidfile"])
            .arg(&pidfile)
            .arg("--socket-dir")
            .arg(h.tenant_dir(host, "a"))
            .args(["--", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("ffcontainer");
        fftestkit::wait_for(|| pidfile.exists(), Duration::from_secs(20), "pod start");
        Pod { child }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // SIGTERM: ffcontainer kills the pod and removes its netns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn open_mpi_job_with_ranks_on_two_hosts_over_ff() {
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let work = std::env::temp_dir().join(format!("ffucx-mh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let exe = work.join("ffmpi");
    let src = root().join("ucx-transport/tests/mpi/ffmpi.c");
    let st = Command::new("mpicc").args(["-O2", "-o"]).arg(&exe).arg(&src).status().expect("mpicc (libopenmpi-dev)");
    assert!(st.success(), "mpicc failed");

    let tag = std::process::id() % 10000;
    let names = [format!("ucxh{tag}a"), format!("ucxh{tag}b")];
    let pods = [
        Pod::start(&h, 0, &names[0], &format!("{}.11/24", h.subnets[0]), &work),
        Pod::start(&h, 1, &names[1], &format!("{}.12/24", h.subnets[1]), &work),
    ];
    let hosts = work.join("hosts");
    std::fs::write(&hosts, format!("{} slots=1\n{} slots=1\n", names[0], names[1])).unwrap();

    let lib = lib();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &h.ns[0], "mpirun", "--allow-run-as-root", "-np", "2", "--hostfile"])
        .arg(&hosts)
        .arg("--mca")
        .arg("plm_rsh_agent")
        .arg(root().join("tools/ffrsh"))
        .args(["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any"])
        .args(["--mca", "oob_tcp_if_include", "10.0.0.0/8", "--mca", "btl", "self"])
        .args(["-x", "UCX_TLS=ff,self", "-x"])
        .arg(format!("LD_PRELOAD={}", lib.display()))
        .args(["-x", "UCX_LOG_LEVEL=info"])
        .arg(&exe)
        .env("FFRSH_DIR", &work)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("mpirun did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    drop(pods);
    let _ = std::fs::remove_dir_all(&work);
    assert!(out.status.success(), "mpirun failed:\n{stdout}\n{stderr}");
    for (rank, n) in names.iter().enumerate() {
        let line = format!("FFMPI OK rank {rank}/2 host {n} ");
        assert!(stdout.contains(&line), "missing {line:?}:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("max 67108864"), "sizes up to 64 MiB");
    // ff carried the traffic between the ranks (the only transport allowed
    // besides self): the lanes to the other rank say so.
    let log = format!("{stdout}\n{stderr}");
    let lanes: Vec<&str> = log.lines().filter(|l| l.contains("ep_cfg[")).collect();
    let remote: Vec<&&str> = lanes.iter().filter(|l| !l.contains("self/")).collect();
    assert!(remote.len() >= 2 && remote.iter().all(|l| l.contains("tag(ff/router)")), "lanes: {lanes:?}");
}
