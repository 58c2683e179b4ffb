//! Two emulated hosts for multi-host tests: each a network namespace with its
//! own router and container bridge, joined by a veth pair.
//!
//! ```text
//!  netns H0                                        netns H1
//!  ffrouter --listen-addr 10.88.0.1:7070           ffrouter --listen-addr 10.88.0.2:7070
//!  bridge ffbr (10.71.0.1/24) ── containers        bridge ffbr (10.72.0.1/24) ── containers
//!  veth ffh0 10.88.0.1/24 ════════════════════════ veth ffh1 10.88.0.2/24
//! ```
//!
//! Routes between the container subnets go over the veth (for baselines that
//! let containers talk to each other directly); FreeFlow only needs each
//! container to reach its own router's socket. Everything is removed on drop,
//! also when a test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin, router_flags, router_log, unique, wait_for, Container, Spec};

pub const PORT: u16 = 7070;

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).expect("read /dev/urandom");
    u128::from_le_bytes(b)
}

pub struct TwoHosts {
    /// Network namespace names.
    pub ns: [String; 2],
    /// Router addresses on the veth.
    pub addrs: [String; 2],
    /// Container subnets ("10.71.0", "10.72.0").
    pub subnets: [String; 2],
    pub bridge: String,
    /// Per host: a private parent directory holding one socket directory per tenant.
    pub dirs: [PathBuf; 2],
    routers: [Option<Child>; 2],
    router_args: [Vec<String>; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn in_ns(ns: &str, args: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("run ip netns exec");
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl TwoHosts {
    /// Creates both hosts (no routers yet).
    #[allow(clippy::new_without_default)] // it creates network namespaces: no default value
    pub fn new() -> TwoHosts {
        let tag = format!("{}-{}", std::process::id() % 100000, unique());
        let ns = [format!("ffh0-{tag}"), format!("ffh1-{tag}")];
        let dirs = [0, 1].map(|i| PathBuf::from(format!("/tmp/ffhost{i}-{tag}")));
        let h = TwoHosts {
            ns: ns.clone(),
            addrs: ["10.88.0.1".into(), "10.88.0.2".into()],
            subnets: ["10.71.0".into(), "10.72.0".into()],
            bridge: "ffbr".into(),
            dirs,
            routers: [None, None],
            router_args: [Vec::new(), Vec::new()],
        };
        for n in &ns {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
            ip(&["netns", "add", n]);
        }
        // The veth's ends get their final names inside the namespaces.
        let (va, vb) = (format!("ffa{}", tag.replace('-', "")), format!("ffb{}", tag.replace('-', "")));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        ip(&["link", "add", va, "netns", &ns[0], "type", "veth", "peer", "name", vb, "netns", &ns[1]]);
        for (i, v) in [va, vb].into_iter().enumerate() {
            let n = &ns[i];
            ip(&["-n", n, "link", "set", v, "name", "ffh"]);
            ip(&["-n", n, "addr", "add", &format!("{}/24", h.addrs[i]), "dev", "ffh"]);
            ip(&["-n", n, "link", "set", "ffh", "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            // The container bridge, made now so the routes can name it.
            ip(&["-n", n, "link", "add", "name", &h.bridge, "type", "bridge"]);
            ip(&["-n", n, "addr", "add", &format!("{}.1/24", h.subnets[i]), "dev", &h.bridge]);
            ip(&["-n", n, "link", "set", &h.bridge, "up"]);
            let other = 1 - i;
            ip(&["-n", n, "route", "add", &format!("{}.0/24", h.subnets[other]), "via", &h.addrs[other]]);
            in_ns(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        for d in &h.dirs {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        h
    }

    /// The router address of host `i` (IP:PORT).
    pub fn router_addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.addrs[i])
    }

    pub fn tenant_dir(&self, i: usize, tenant: &str) -> PathBuf {
        self.dirs[i].join(tenant)
    }

    /// The peer secret both routers get unless a test gives its own
    /// (`--peer-secret-file` or `--insecure-no-peer-secret` in `extra`).
    pub fn secret_file(&self) -> PathBuf {
        let p = self.dirs[0].join("peer-secret");
        if !p.exists() {
            std::fs::write(&p, format!("test secret {:032x}\n", rand_u128())).unwrap();
        }
        p
    }

    /// Starts host `i`'s router with `tenants`, listening for the other
    /// router on the veth, plus `extra` flags.
    pub fn start_router(&mut self, i: usize, tenants: &[&str], extra: &[&str]) {
        let mut args: Vec<String> = Vec::new();
        for t in tenants {
            std::fs::create_dir_all(self.tenant_dir(i, t)).unwrap();
            args.push("--tenant".into());
            args.push(format!("{t}={}", self.tenant_dir(i, t).join("ffrouter.sock").display()));
        }
        args.extend(["--listen-addr".to_string(), self.router_addr(i)]);
        if !extra.iter().any(|a| *a == "--peer-secret-file" || *a == "--insecure-no-peer-secret") {
            args.extend(["--peer-secret-file".to_string(), self.secret_file().display().to_string()]);
        }
        args.extend(router_flags(extra));
        self.router_args[i] = args;
        self.spawn_router(i, tenants);
    }

    fn spawn_router(&mut self, i: usize, tenants: &[&str]) {
        for t in tenants {
            let _ = std::fs::remove_file(self.tenant_dir(i, t).join("ffrouter.sock"));
        }
        let log = router_log(&self.dirs[i]);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[i]])
            .arg(bin("ffrouter"))
            .args(&self.router_args[i])
            .stderr(log)
            .spawn()
            .expect("start ffrouter");
        self.routers[i] = Some(child);
        for t in tenants {
            let s = self.tenant_dir(i, t).join("ffrouter.sock");
            wait_for(|| s.exists(), Duration::from_secs(10), "router socket");
        }
    }

    /// SIGKILLs host `i`'s router.
    pub fn kill_router(&mut self, i: usize) {
        if let Some(mut c) = self.routers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) host `i`'s router: a router
    /// that gets no CPU for a while, as on a host with every core busy.
    pub fn freeze_router(&mut self, i: usize, frozen: bool) {
        let c = self.routers[i].as_ref().expect("router running");
        // `ip netns exec` execs the router: the child is the router itself.
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(c.id() as libc::pid_t, sig) }, 0, "signal the router");
    }

    /// What host `i`'s router logged so far (its stderr).
    pub fn router_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("router.log")).unwrap_or_default()
    }

    /// Runs `argv` in host `i`'s network namespace (not in a container).
    pub fn in_host(&self, i: usize, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[i]]).args(argv);
        c
    }

    /// Is host `i`'s router running?
    pub fn router_alive(&mut self, i: usize) -> bool {
        self.routers[i].as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Runs `argv` in a container on host `i`, in `tenant`.
    pub fn container(&self, i: usize, tenant: &str, argv: &[&str]) -> Container {
        self.container_env(i, tenant, argv, Vec::new())
    }

    pub fn container_env(&self, i: usize, tenant: &str, argv: &[&str], env: Vec<(String, String)>) -> Container {
        let dir = self.tenant_dir(i, tenant);
        let spec = Spec {
            socket_dir: Some(&dir),
            bridge: Some(&self.bridge),
            host_netns: Some(&self.ns[i]),
            subnet: &self.subnets[i],
            env,
        };
        Container::run_spec(&spec, argv)
    }

    /// A client context attached from the test process to host `i`'s router.
    pub fn context(&self, i: usize, tenant: &str) -> ffcore::Context {
        let s = self.tenant_dir(i, tenant).join("ffrouter.sock");
        ffcore::Context::with_socket(s.to_str().unwrap()).expect("attach to router")
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for i in 0..2 {
            self.kill_router(i);
            if std::thread::panicking() {
                eprintln!("--- router log of host {i}:\n{}", self.router_log(i));
            }
        }
        for n in &self.ns {
            // Deleting a namespace removes its veth, bridge and routes.
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `ffbench serve` on host `si` and `ffbench connect` on host `ci` (tenant
/// `t` on both), handle passed out of band; both outcomes.
pub fn bench_across(h: &TwoHosts, t: &str, si: usize, ci: usize, args: &[&str], timeout: Duration) -> ((bool, String, String), (bool, String, String)) {
    let b = bin("ffbench");
    let b = b.to_str().unwrap();
    let mut sargv = vec![b, "serve"];
    sargv.extend_from_slice(args);
    let mut server = h.container(si, t, &sargv);
    let handle = server.read_line_with("HANDLE ");
    let mut cargv = vec![b, "connect"];
    cargv.extend_from_slice(args);
    cargv.extend_from_slice(&["--handle", &handle]);
    let client = h.container(ci, t, &cargv);
    let c = client.finish(timeout);
    let s = server.finish(timeout);
    (s, c)
}
