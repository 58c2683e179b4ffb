//! What the Open MPI tests share: the built transport and one ffmpi job
//! with its checks (the "pods" that tools/ffrsh enters are fftestkit::Pod).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fftestkit::{bin_dir, mpi};

/// The cdylib: `cargo test` refreshes target/<profile>/deps/ only, `cargo
/// build` also target/<profile>/; take the newer.
pub fn lib() -> PathBuf {
    let cands = [bin_dir().join("deps/libuct_ff.so"), bin_dir().join("libuct_ff.so")];
    let newest = cands.iter().filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone()))).max();
    newest.map(|(_, p)| p).expect("libuct_ff.so not built (cargo build -p ucx-transport)")
}

/// `ucx-transport/tests/ucp/<name>.c`, compiled with gcc against the
/// installed libucp into a directory of this test process, once per test
/// binary (the caller keeps the path in a `OnceLock`).
#[allow(dead_code)] // not every test binary runs UCP programs
pub fn build_ucp_program(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let src = fftestkit::root().join(format!("ucx-transport/tests/ucp/{name}.c"));
    let st = std::process::Command::new("gcc").args(["-O1", "-Wall", "-Werror", "-o"]).arg(&out).arg(&src).args(["-lucp", "-lucs"]).status().expect("gcc");
    assert!(st.success(), "compiling {name}.c failed (libucx-dev installed?)");
    out
}

/// A fresh work directory holding ffmpi, compiled with mpicc.
pub fn build_ffmpi(name: &str) -> PathBuf {
    let work = fftestkit::fresh_dir(name);
    mpi::build_ffmpi(&work);
    work
}

/// Runs ffmpi with one rank in each of the pods `names` (entered through
/// ffrsh, pidfiles in `work`), UCX_TLS=ff,self, and checks that both ranks
/// verified every size up to 64 MiB on their own hosts and that ff carried
/// all traffic between them (the only transport allowed besides self: the
/// lanes to the other rank say so). `launch_netns`: where mpirun runs
/// (None: here); `mca`: extra MCA arguments (e.g. the out-of-band network).
/// Returns the job's output (UCX logs at info level).
pub fn run_ffmpi(work: &Path, names: &[String; 2], launch_netns: Option<&str>, mca: &[&str]) -> String {
    // The heap on (the default; set here whatever the environment says):
    // ffmpi's malloc'd buffers are shadow memory, and GETs between hosts
    // are held and placed.
    let env = ["UCX_TLS=ff,self".to_string(), format!("LD_PRELOAD={}", lib().display()), "UCX_LOG_LEVEL=info".to_string(), "UCX_FF_HEAP=1m".to_string()];
    let log = mpi::run_ffmpi(work, names, launch_netns, mca, &env, &[work.join("ffmpi")], Duration::from_secs(180));
    mpi::assert_remote_lanes(&log, "tag(ff/router)");
    log
}
