//! Test harness shared by the workspace's integration tests: a router
//! process with tenants, and commands run in namespace-isolated containers
//! (`tools/ffcontainer`: own network, IPC, PID and mount namespaces, only
//! the tenant's socket directory visible).
//!
//! Needs root (network namespaces). Binaries are found next to the test
//! executable's target directory (`target/<profile>/`).

pub mod hosts;
pub mod mpi;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `target/<profile>` holding the workspace binaries.
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `setpriv` arguments that run the rest of a command line as nobody with
/// no capability at all (bounding set included) and no way to gain any.
pub const AS_NOBODY: [&str; 8] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"];

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} not built (run cargo build --workspace first)", p.display());
    p
}

/// Is `cmd` on the PATH?
pub fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A cdylib of the workspace (`libffverbs.so`): `cargo test` refreshes
/// target/<profile>/deps/ only, `cargo build` also target/<profile>/, so
/// the newer of the two.
pub fn built_lib(name: &str) -> PathBuf {
    let cands = [bin_dir().join("deps").join(name), bin_dir().join(name)];
    cands
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("{name} not built (cargo build --workspace)"))
}

/// Waits for a child with piped output (at most `timeout`, then kills it):
/// (success, stdout, stderr).
pub fn finish_child(mut c: Child, timeout: Duration) -> (bool, String, String) {
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

pub fn ffcontainer() -> PathBuf {
    root().join("tools/ffcontainer")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A process-unique small number for names and addresses.
pub fn unique() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// An empty directory `NAME-PID` in the temporary directory (what was
/// there from an earlier run of this process id is removed).
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test's extra router flags, and the log level (FF_TEST_ROUTER_LOG,
/// default warn) unless they set one.
pub fn router_flags(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if !extra.contains(&"--log-level") {
        args.push("--log-level".into());
        args.push(std::env::var("FF_TEST_ROUTER_LOG").unwrap_or("warn".into()));
    }
    args
}

/// The file a router started in `dir` logs to (its stderr): `dir/router.log`.
pub fn router_log(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join("router.log")).expect("router log")
}

/// A router process serving tenants "a" and "b" (more on request), each
/// with its own socket directory under one private parent directory.
pub struct RouterProc {
    pub dir: PathBuf,
    pub child: Child,
    tenants: Vec<String>,
    args: Vec<String>,
}

impl RouterProc {
    pub fn start(tenants: &[&str], extra: &[&str]) -> RouterProc {
        let dir = PathBuf::from(format!("/tmp/fftest-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = Vec::new();
        for t in tenants {
            std::fs::create_dir_all(dir.join(t)).unwrap();
            args.push("--tenant".to_string());
            args.push(format!("{t}={}", dir.join(t).join("ffrouter.sock").display()));
        }
        args.extend(router_flags(extra));
        let child = Self::spawn(&dir, tenants, &args);
        RouterProc { dir, child, tenants: tenants.iter().map(|s| s.to_string()).collect(), args }
    }

    fn spawn(dir: &Path, tenants: &[&str], args: &[String]) -> Child {
        for t in tenants {
            let _ = std::fs::remove_file(dir.join(t).join("ffrouter.sock"));
        }
        let child = Command::new(bin("ffrouter")).args(args).stderr(router_log(dir)).spawn().expect("start ffrouter");
        for t in tenants {
            let s = dir.join(t).join("ffrouter.sock");
            wait_for(|| s.exists(), Duration::from_secs(10), "router socket");
        }
        child
    }

    /// SIGKILLs the router (its sockets stay behind as stale files).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the router again with the same tenants and flags.
    pub fn restart(&mut self) {
        self.kill();
        let tenants: Vec<&str> = self.tenants.iter().map(|s| s.as_str()).collect();
        self.child = Self::spawn(&self.dir, &tenants, &self.args);
    }

    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        assert!(self.tenants.iter().any(|t| t == tenant), "unknown tenant {tenant}");
        self.dir.join(tenant)
    }

    pub fn socket(&self, tenant: &str) -> PathBuf {
        self.tenant_dir(tenant).join("ffrouter.sock")
    }

    /// A client context attached from the host (the test process).
    pub fn context(&self, tenant: &str) -> ffcore::Context {
        ffcore::Context::with_socket(self.socket(tenant).to_str().unwrap()).expect("attach to router")
    }

    /// Is the router process still alive?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the router logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- router log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A command running in a container.
pub struct Container {
    pub name: String,
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pidfile: PathBuf,
}

/// Builder for a container.
pub struct Spec<'a> {
    pub socket_dir: Option<&'a Path>,
    pub bridge: Option<&'a str>,
    pub host_netns: Option<&'a str>,
    pub subnet: &'a str,
    pub env: Vec<(String, String)>,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec { socket_dir: None, bridge: None, host_netns: None, subnet: "10.77.0", env: Vec::new() }
    }
}

impl Container {
    /// Runs `argv` in a new container attached to `socket_dir`'s tenant.
    pub fn run(socket_dir: &Path, argv: &[&str]) -> Container {
        Self::run_spec(&Spec { socket_dir: Some(socket_dir), ..Spec::default() }, argv)
    }

    pub fn run_spec(spec: &Spec, argv: &[&str]) -> Container {
        let n = unique();
        let name = format!("t{}-{n}", std::process::id() % 100000);
        let ip = format!("{}.{}/24", spec.subnet, 10 + (std::process::id() * 7 + n) % 240);
        let pidfile = std::env::temp_dir().join(format!("ffc-{name}.pid"));
        let mut cmd = Command::new(ffcontainer());
        cmd.args(["run", "--name", &name, "--ip", &ip, "--pidfile"]).arg(&pidfile);
        if let Some(d) = spec.socket_dir {
            cmd.arg("--socket-dir").arg(d);
        }
        if let Some(b) = spec.bridge {
            cmd.args(["--bridge", b]);
        }
        if let Some(ns) = spec.host_netns {
            cmd.args(["--host-netns", ns]);
        }
        cmd.arg("--");
        if !spec.env.is_empty() {
            cmd.arg("env");
            for (k, v) in &spec.env {
                cmd.arg(format!("{k}={v}"));
            }
        }
        cmd.args(argv).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start ffcontainer");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Container { name, child, stdout, pidfile }
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest.
    pub fn read_line_with(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            if n == 0 {
                let err = self.stderr_now();
                panic!("container {} ended before printing {prefix:?}: {err}", self.name);
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    fn stderr_now(&mut self) -> String {
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Waits for exit (at most `timeout`, then kills): (success, stdout rest, stderr).
    pub fn finish(mut self, timeout: Duration) -> (bool, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > timeout {
                self.kill();
                let _ = self.child.wait();
                let err = self.stderr_now();
                panic!("container {} did not finish within {timeout:?}: {err}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        use std::io::Read;
        let _ = self.stdout.read_to_string(&mut out);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.success(), out, err)
    }

    /// SIGKILLs the whole container (its PID namespace).
    pub fn kill(&mut self) {
        if let Ok(s) = std::fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                // SAFETY: plain kill(2) on a pid we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Waits until the pidfile exists (the container is set up).
    pub fn wait_started(&self) {
        wait_for(|| self.pidfile.exists(), Duration::from_secs(20), "container start");
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// A long-lived container ("pod") that tools/ffrsh can enter, e.g. for an
/// Open MPI job (pidfile RSH_DIR/NAME.pid; ffrsh finds it with
/// FFRSH_DIR=RSH_DIR).
pub struct Pod {
    child: Child,
}

impl Pod {
    /// `host_netns`: the "host" the pod's bridge lives in (None: this one).
    pub fn start(name: &str, ip: &str, bridge: &str, host_netns: Option<&str>, socket_dir: &Path, rsh_dir: &Path) -> Pod {
        let pidfile = rsh_dir.join(format!("{name}.pid"));
        let mut cmd = Command::new(ffcontainer());
        cmd.args(["run", "--name", name, "--ip", ip, "--bridge", bridge]);
        if let Some(ns) = host_netns {
            cmd.args(["--host-netns", ns]);
        }
        let child = cmd
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--socket-dir")
            .arg(socket_dir)
            .args(["--", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("ffcontainer");
        wait_for(|| pidfile.exists(), Duration::from_secs(20), "pod start");
        Pod { child }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // SIGTERM: ffcontainer kills the pod and removes its netns.
        // SAFETY: plain kill(2) on the ffcontainer process we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `ffbench serve MODE` and `ffbench connect MODE` in two containers of
/// the given tenants (socket dirs), passing the handle out of band; returns
/// both outcomes.
pub fn bench_pair(serve_dir: &Path, connect_dir: &Path, args: &[&str], timeout: Duration) -> ((bool, String, String), (bool, String, String)) {
    let b = bin("ffbench");
    let b = b.to_str().unwrap();
    let mut sargv = vec![b, "serve"];
    sargv.extend_from_slice(args);
    let mut server = Container::run(serve_dir, &sargv);
    let handle = server.read_line_with("HANDLE ");
    let mut cargv = vec![b, "connect"];
    cargv.extend_from_slice(args);
    cargv.extend_from_slice(&["--handle", &handle]);
    let client = Container::run(connect_dir, &cargv);
    let c = client.finish(timeout);
    let s = server.finish(timeout);
    (s, c)
}
