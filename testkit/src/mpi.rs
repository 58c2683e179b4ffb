//! Open MPI jobs between pods ([`crate::Pod`], entered by `tools/ffrsh`):
//! the ffmpi test program (`ucx-transport/tests/mpi/ffmpi.c`: every size
//! from 1 B to 64 MiB both ways, every byte checked, and an allreduce)
//! with one rank in each of two pods.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::root;

/// Compiles ffmpi into `dir` with mpicc; returns its path.
pub fn build_ffmpi(dir: &Path) -> PathBuf {
    let exe = dir.join("ffmpi");
    let src = root().join("ucx-transport/tests/mpi/ffmpi.c");
    let st = Command::new("mpicc").args(["-O2", "-o"]).arg(&exe).arg(&src).status().expect("mpicc (libopenmpi-dev)");
    assert!(st.success(), "mpicc failed");
    exe
}

/// One ffmpi job: `program` (ffmpi, possibly behind a wrapper) with one
/// rank in each of the pods `names`, launched by mpirun (in the network
/// namespace `launch_netns`, or here) through `tools/ffrsh` with its
/// pidfiles and the hostfile in `work`; UCX's pml, any transport and
/// device UCX offers, then `mca` and `-x` `env` on top (`UCX_TLS=...`).
/// Asserts that mpirun finished within `timeout` and that both ranks
/// verified every size up to 64 MiB on their own hosts; returns mpirun's
/// stdout and stderr together, for the caller's checks.
pub fn run_ffmpi<S: AsRef<OsStr>>(work: &Path, names: &[String; 2], launch_netns: Option<&str>, mca: &[&str], env: &[String], program: &[S], timeout: Duration) -> String {
    let hosts = work.join("hosts");
    std::fs::write(&hosts, format!("{} slots=1\n{} slots=1\n", names[0], names[1])).unwrap();
    let mut cmd = match launch_netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "mpirun"]);
            c
        }
        None => Command::new("mpirun"),
    };
    cmd.args(["--allow-run-as-root", "-np", "2", "--hostfile"]).arg(&hosts);
    cmd.arg("--mca").arg("plm_rsh_agent").arg(root().join("tools/ffrsh"));
    cmd.args(["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any", "--bind-to", "none"]);
    cmd.args(mca);
    for x in env {
        cmd.arg("-x").arg(x);
    }
    cmd.args(program);
    cmd.env("FFRSH_DIR", work).current_dir(work).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("mpirun");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("mpirun did not finish in {timeout:?}:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mpirun failed:\n{so}\n{se}");
    for (rank, n) in names.iter().enumerate() {
        let line = format!("FFMPI OK rank {rank}/2 host {n} ");
        assert!(so.contains(&line), "missing {line:?}:\n{so}\n{se}");
    }
    assert!(so.contains("max 67108864"), "sizes up to 64 MiB:\n{so}");
    format!("{so}\n{se}")
}

/// Asserts that UCX (`UCX_LOG_LEVEL=info` in the job's environment) gave
/// the lanes towards the other rank to `lane`, e.g. `tag(ff/router)`.
pub fn assert_remote_lanes(log: &str, lane: &str) {
    let lanes: Vec<&str> = log.lines().filter(|l| l.contains("ep_cfg[")).collect();
    let remote: Vec<&&str> = lanes.iter().filter(|l| !l.contains("self/")).collect();
    assert!(remote.len() >= 2 && remote.iter().all(|l| l.contains(lane)), "lanes (want {lane}): {lanes:?}");
}
