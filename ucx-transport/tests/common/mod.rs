//! What the Open MPI tests share: the built transport and one ffmpi job
//! with its checks (the "pods" that tools/ffrsh enters are fftestkit::Pod).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fftestkit::{bin_dir, root};

/// The cdylib: `cargo test` refreshes target/<profile>/deps/ only, `cargo
/// build` also target/<profile>/; take the newer.
pub fn lib() -> PathBuf {
    let cands = [bin_dir().join("deps/libuct_ff.so"), bin_dir().join("libuct_ff.so")];
    let newest = cands.iter().filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone()))).max();
    newest.map(|(_, p)| p).expect("libuct_ff.so not built (cargo build -p ucx-transport)")
}

/// A fresh work directory holding ffmpi, compiled with mpicc.
pub fn build_ffmpi(name: &str) -> PathBuf {
    let work = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let src = root().join("ucx-transport/tests/mpi/ffmpi.c");
    let st = Command::new("mpicc").args(["-O2", "-o"]).arg(work.join("ffmpi")).arg(&src).status().expect("mpicc (libopenmpi-dev)");
    assert!(st.success(), "mpicc failed");
    work
}

/// Runs ffmpi with one rank in each of the pods `names` (entered through
/// ffrsh, pidfiles in `work`), UCX_TLS=ff,self, and checks that both ranks
/// verified every size up to 64 MiB on their own hosts and that ff carried
/// all traffic between them. `launch_netns`: where mpirun runs (None: here);
/// `mca`: extra MCA arguments (e.g. the out-of-band network).
pub fn run_ffmpi(work: &Path, names: &[String; 2], launch_netns: Option<&str>, mca: &[&str]) {
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
    let mut child = cmd
        .args(["--allow-run-as-root", "-np", "2", "--hostfile"])
        .arg(&hosts)
        .arg("--mca")
        .arg("plm_rsh_agent")
        .arg(root().join("tools/ffrsh"))
        .args(["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any", "--bind-to", "none"])
        .args(mca)
        .args(["-x", "UCX_TLS=ff,self", "-x"])
        .arg(format!("LD_PRELOAD={}", lib().display()))
        .args(["-x", "UCX_LOG_LEVEL=info"])
        .arg(work.join("ffmpi"))
        .env("FFRSH_DIR", work)
        .current_dir(work)
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
