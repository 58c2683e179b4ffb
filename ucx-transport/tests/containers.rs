//! The ff transport between namespace-isolated containers (tools/ffcontainer:
//! own network, IPC, PID and mount namespaces; only the tenant's router
//! socket shared): ucx_info, ucx_perftest (tag_lat, tag_bw, ucp_put_bw,
//! ucp_get), an Open MPI job launched into the containers through an rsh
//! agent (tools/ffrsh, the way mpi-operator uses kubectl exec), and what
//! happens without a router.
//!
//! Needs root, UCX 1.13 (ucx-utils), Open MPI (openmpi-bin, libopenmpi-dev)
//! and a built workspace (cargo build --workspace).

mod common;

use common::{build_ffmpi, lib, run_ffmpi};
use fftestkit::{Container, Pod, RouterProc, Spec};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

fn port() -> u16 {
    20000 + ((std::process::id() * 13 + fftestkit::unique() * 7) % 20000) as u16
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs `ucx_perftest` server and client in two containers of `socket_dir`'s
/// tenant (or of no router), with LD_PRELOAD on ucx_perftest only. Returns
/// the client's (success, stdout, stderr) and the server's.
fn perftest(socket_dir: Option<&Path>, tls: Option<&str>, args: &str) -> ((bool, String, String), (bool, String, String)) {
    let p = port();
    let lib = lib();
    let mut e = vec![("FFLIB", lib.to_str().unwrap()), ("UCX_LOG_LEVEL", "info")];
    if let Some(t) = tls {
        e.push(("UCX_TLS", t));
    }
    let spec = Spec { socket_dir, env: env(&e), ..Spec::default() };
    let server_sh = format!(
        "LD_PRELOAD=$FFLIB timeout 60 ucx_perftest -p {p} & pid=$!
         for i in $(seq 300); do ss -ltnH 'sport = :{p}' | grep -q . && break; sleep 0.05; done
         echo READY $(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1)
         wait $pid"
    );
    let mut server = Container::run_spec(&spec, &["bash", "-c", &server_sh]);
    let ip = server.read_line_with("READY ");
    let client_sh = format!("LD_PRELOAD=$FFLIB timeout 60 ucx_perftest {ip} -p {p} {args}");
    let client = Container::run_spec(&spec, &["bash", "-c", &client_sh]);
    let c = client.finish(T);
    let s = server.finish(T);
    (c, s)
}

fn final_line(out: &str) -> Option<Vec<f64>> {
    out.lines().find(|l| l.trim_start().starts_with("Final:")).map(|l| l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect())
}

#[test]
fn ucx_info_lists_ff_with_a_router_and_no_device_without() {
    let router = RouterProc::start(&["a"], &[]);
    let lib = lib();
    let spec = Spec { socket_dir: Some(&router.tenant_dir("a")), env: env(&[("LD_PRELOAD", lib.to_str().unwrap())]), ..Spec::default() };
    let (ok, out, err) = Container::run_spec(&spec, &["ucx_info", "-d"]).finish(T);
    assert!(ok, "ucx_info failed: {err}");
    assert!(out.contains("Transport: ff") && out.contains("Device: router"), "{out}");
    assert!(out.contains("put_zcopy") && out.contains("am_bcopy"), "{out}");

    // Configuration through UCX: UCX_FF_* in ucx_info -c.
    let (ok, out, _) = Container::run_spec(&spec, &["ucx_info", "-c"]).finish(T);
    assert!(ok);
    for v in ["UCX_FF_ROUTER_SOCKET", "UCX_FF_SEG_SIZE", "UCX_FF_INLINE_RMA", "UCX_FF_BANDWIDTH"] {
        assert!(out.contains(v), "{v} missing from ucx_info -c");
    }

    // No router mounted: the component is there, with no device.
    let spec = Spec { socket_dir: None, env: env(&[("LD_PRELOAD", lib.to_str().unwrap())]), ..Spec::default() };
    let start = Instant::now();
    let (ok, out, err) = Container::run_spec(&spec, &["ucx_info", "-d"]).finish(T);
    assert!(ok, "{err}");
    assert!(out.contains("Component: ff"), "{out}");
    assert!(!out.contains("Transport: ff"), "no router, no ff device: {out}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn ucx_perftest_between_containers() {
    let router = RouterProc::start(&["a"], &[]);
    let dir = router.tenant_dir("a");
    let cases = [
        ("tag_lat", "-t tag_lat -s 8 -n 20000 -w 2000"),
        ("tag_bw", "-t tag_bw -s 65536 -n 2000 -w 200"),
        // Host memory (-m host), zero-copy sizes: rendezvous over shadow
        // memory (registered buffers, GET/PUT zcopy).
        ("tag_bw", "-t tag_bw -m host -s 4194304 -n 60 -w 10"),
        ("ucp_put_bw", "-t ucp_put_bw -m host -s 1048576 -n 200 -w 20"),
        ("ucp_get", "-t ucp_get -m host -s 1048576 -n 200 -w 20"),
    ];
    for (name, args) in cases {
        let ((ok, out, err), (sok, _, serr)) = perftest(Some(&dir), Some("ff,self"), args);
        assert!(ok && sok, "{name} ({args}) failed:\nclient: {err}\nserver: {serr}");
        let f = final_line(&out).unwrap_or_else(|| panic!("{name}: no Final line in {out}"));
        assert!(f.len() >= 7 && f[0] > 0.0, "{name}: {f:?}");
        // The lanes: ff carries the traffic (UCX_LOG_LEVEL=info).
        // (UCX logs to stdout unless UCX_LOG_FILE says otherwise.)
        let log = format!("{out}\n{err}");
        let lanes: Vec<&str> = log.lines().filter(|l| l.contains("ep_cfg[")).collect();
        assert!(!lanes.is_empty() && lanes.iter().all(|l| l.contains("ff/router")), "{name}: lanes {lanes:?}");
        eprintln!("{name} {args}: {}", out.lines().find(|l| l.contains("Final")).unwrap_or(""));
    }
}

#[test]
fn without_a_router_ucx_uses_other_transports_or_fails_clearly() {
    // Forced: UCX_TLS=ff,self cannot connect two containers; both sides end
    // with an error that names the missing router, no hang.
    let start = Instant::now();
    let ((ok, out, err), (_, sout, serr)) = perftest(None, Some("ff,self"), "-t tag_lat -s 8 -n 1000");
    assert!(!ok, "the client must fail");
    let all = format!("{out}\n{err}\n{sout}\n{serr}");
    assert!(all.contains("no FreeFlow router"), "no clear message: {all}");
    assert!(start.elapsed() < Duration::from_secs(60));
    // Not forced: UCX picks another transport (tcp over the veth).
    let ((ok, out, err), (sok, _, serr)) = perftest(None, None, "-t tag_lat -s 8 -n 1000");
    assert!(ok && sok, "default transports failed:\n{err}\n{serr}");
    assert!(final_line(&out).is_some());
    assert!(!out.contains("ff/router") && !err.contains("ff/router"));
}

#[test]
fn open_mpi_job_across_containers_with_an_rsh_agent() {
    let router = RouterProc::start(&["a"], &[]);
    let work = build_ffmpi("ffucx-mpi");
    let tag = std::process::id() % 10000;
    let names = [format!("ucxm{tag}a"), format!("ucxm{tag}b")];
    let subnet = 10 + tag % 200;
    let pods: Vec<Pod> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Pod::start(n, &format!("10.79.{subnet}.{}/24", 11 + i), "ffbrucx", None, &router.tenant_dir("a"), &work))
        .collect();
    let log = run_ffmpi(&work, &names, None, &["--mca", "oob_tcp_if_include", &format!("10.79.{subnet}.0/24")]);
    // Peers on one host share the ring: every active message is copied out
    // of it before UCP parses it, never read in place.
    assert!(!log.contains("read in place"), "an active message from a peer on this host was read in place:\n{log}");
    drop(pods);
    let _ = std::fs::remove_dir_all(&work);
}
