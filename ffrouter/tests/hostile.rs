//! A hostile tenant (`ffhostile`, in a namespace container, as nobody with
//! no capability) against a real router, one class of attack per test:
//! limits, half frames, corrupted shared pages, and (two emulated hosts)
//! links between routers: dialing what is not a router, relays, stalled
//! handshakes. Needs root.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ffcore::ErrorCode;
use fftestkit::hosts::TwoHosts;
use fftestkit::{bin, Container, RouterProc, AS_NOBODY};

const LONG: Duration = Duration::from_secs(120);

fn hostile(dir: &std::path::Path, args: &[&str]) -> Container {
    let b = bin("ffhostile");
    let mut argv: Vec<&str> = AS_NOBODY.to_vec();
    argv.push(b.to_str().unwrap());
    argv.extend_from_slice(args);
    Container::run(dir, &argv)
}

fn hostile_on(h: &TwoHosts, i: usize, tenant: &str, args: &[&str]) -> Container {
    let b = bin("ffhostile");
    let mut argv: Vec<&str> = AS_NOBODY.to_vec();
    argv.push(b.to_str().unwrap());
    argv.extend_from_slice(args);
    h.container(i, tenant, &argv)
}

/// Attaches to `tenant` of `r`: (time it took, the outcome).
fn attach(r: &RouterProc, tenant: &str) -> (Duration, Result<ffcore::Context, ffcore::Error>) {
    let t = Instant::now();
    let c = ffcore::Context::with_socket(r.socket(tenant).to_str().unwrap());
    (t.elapsed(), c)
}

#[test]
fn a_tenant_at_every_limit_leaves_other_tenants_attaching() {
    // Two tenants share 800 descriptors and 100 threads: 400 and 50 each.
    let r = RouterProc::start(&["a", "b"], &["--max-fds", "800", "--max-threads", "100", "--log-level", "info"]);
    assert!(r.log().contains("limits: open files"), "the router says what it got:\n{}", r.log());
    let mut bad = hostile(&r.tenant_dir("a"), &["exhaust"]);
    let clients = bad.read_line_with("CLIENTS ");
    let regions = bad.read_line_with("REGIONS ");
    bad.read_line_with("AT-LIMITS");
    // 50 clients (threads), 2 descriptors each; 300 regions fill the rest.
    assert!(clients.starts_with("50 ") && clients.contains("ResourceExhausted"), "{clients}");
    assert!(regions.starts_with("300 ") && regions.contains("ResourceExhausted"), "{regions}");
    // Tenant a is full: another of its clients is refused, with a reason.
    match attach(&r, "a").1 {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}"),
        Ok(_) => panic!("tenant a is past its share"),
    }
    // Tenant b attaches at once, again and again, and works.
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let (took, c) = attach(&r, "b");
        let c = c.expect("tenant b attaches");
        best = best.min(took);
        let l = c.listen().unwrap();
        let mut tx = c.connect(&l.handle()).unwrap().unwrap();
        let mut rx = l.accept_timeout(Duration::from_secs(5)).unwrap();
        tx.send(b"still served", 1, Some(LONG)).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(rx.recv(&mut buf, 1, Some(LONG)).unwrap(), 12);
    }
    assert!(best <= Duration::from_millis(100), "tenant b's attach took {best:?}");
    // The attacker leaves: everything is freed, tenant a attaches again.
    bad.kill();
    drop(bad);
    fftestkit::wait_for(|| attach(&r, "a").1.is_ok(), Duration::from_secs(10), "tenant a's share to be freed");
}

#[test]
fn a_client_that_sends_half_a_frame_is_dropped() {
    let r = RouterProc::start(&["a"], &[]);
    let mut bad = hostile(&r.tenant_dir("a"), &["half-frame"]);
    bad.read_line_with("STALLED");
    // Others are served meanwhile.
    let probe = r.context("a");
    assert_eq!(probe.stats().unwrap().clients, 2);
    let dropped = bad.read_line_with("DROPPED ");
    let ms: u64 = dropped.trim_start_matches("ms=").parse().unwrap();
    assert!(ms < 15_000, "dropped after {ms} ms");
    fftestkit::wait_for(|| probe.stats().unwrap().clients == 1, Duration::from_secs(5), "the client's resources to be freed");
}

#[test]
fn a_peer_that_corrupts_the_control_page_and_exits_is_reported_closed() {
    let r = RouterProc::start(&["a"], &[]);
    let b = bin("ffhostile");
    let mut victim = Container::run(&r.tenant_dir("a"), &[b.to_str().unwrap(), "victim"]);
    let handle = victim.read_line_with("HANDLE ");
    let mut bad = hostile(&r.tenant_dir("a"), &["corrupt-page", &handle]);
    victim.read_line_with("ACCEPTED");
    bad.read_line_with("CORRUPTED");
    let (ok, _, err) = bad.finish(LONG);
    assert!(ok, "{err}");
    let gone = Instant::now();
    let result = victim.read_line_with("RESULT ");
    let took = gone.elapsed();
    assert!(result.contains("PeerClosed"), "{result}");
    assert!(took < Duration::from_secs(5), "the victim learnt it after {took:?}");
    // The router is healthy and frees the connection once the victim goes.
    let (ok, _, err) = victim.finish(LONG);
    assert!(ok, "{err}");
    let probe = r.context("a");
    fftestkit::wait_for(|| probe.stats().unwrap().conns == 0, Duration::from_secs(5), "the connection to be freed");
}

#[test]
fn the_router_dials_only_routers_and_tells_tenants_nothing_about_ports() {
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let l = h.context(0, "a").listen().unwrap();
    let hx = l.handle().to_hex();
    // Loopback of the router's host, the container's own network: not
    // router addresses, refused at once.
    for addr in ["127.0.0.1:7070", "127.0.0.1:22", "10.72.0.1:22"] {
        let mut c = hostile_on(&h, 1, "a", &["connect", &hx, addr]);
        let r = c.read_line_with("RESULT ");
        assert!(r.contains("PermissionDenied") && r.contains("not a router address"), "{addr}: {r}");
    }
    // In the routers' network: a port where something that is not a router
    // listens, and a closed port. Same error, same time.
    let mut svc = h.in_host(0, &[bin("ffhostile").to_str().unwrap(), "tcp-listen", "10.88.0.1:9999", "60"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(svc.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "LISTENING");
    let mut results = Vec::new();
    for port in ["9999", "9998"] {
        let mut c = hostile_on(&h, 1, "a", &["connect", &hx, &format!("10.88.0.1:{port}")]);
        let r = c.read_line_with("RESULT ");
        let (ms, rest) = r.split_once(' ').unwrap();
        let ms: u64 = ms.trim_start_matches("ms=").parse().unwrap();
        results.push((ms, rest.replace(port, "PORT")));
    }
    let _ = svc.kill();
    let _ = svc.wait();
    assert_eq!(results[0].1, results[1].1, "the errors differ");
    assert!(results[0].1.contains("Unreachable") && results[0].1.contains("no FreeFlow router answered"), "{}", results[0].1);
    for (ms, _) in &results {
        assert!(*ms >= 2500, "a failure after {ms} ms tells the port's state (refused at once vs timed out)");
    }
    // A real router is still reached.
    let mut c = hostile_on(&h, 1, "a", &["connect", &hx]);
    assert!(c.read_line_with("RESULT ").contains("connected"));
}

#[test]
fn a_relay_between_routers_gets_nothing_through() {
    // A misconfigured peer network that includes the containers' networks:
    // the handshake and the sealed links are what stop a tenant then.
    let mut h = TwoHosts::new();
    h.start_router(0, &["a", "b"], &["--peer-network", "10.0.0.0/8"]);
    h.start_router(1, &["a", "b"], &["--peer-network", "10.0.0.0/8"]);
    let victim = h.context(0, "b");
    let lb = victim.listen().unwrap();
    let hb = lb.handle();
    // Relayed to its own router: a link to itself, refused.
    let mut c = hostile_on(&h, 1, "a", &["relay", "9100", "10.88.0.2:7070", &hb.to_hex()]);
    c.read_line_with("STREAM");
    let r = c.read_line_with("RESULT ");
    assert!(r.contains("Unreachable"), "{r}");
    drop(c);
    // Relayed to the other host's router, with a forged CONNECT for tenant
    // b's listener (nonce and all) injected after the handshake: the link
    // breaks, nothing reaches tenant b.
    let tamper = format!("b:{}:{}", hb.listener, hb.nonce);
    let mut c = hostile_on(&h, 1, "a", &["relay", "9101", "10.88.0.1:7070", &hb.to_hex(), &tamper]);
    c.read_line_with("INJECTED");
    let r = c.read_line_with("RESULT ");
    assert!(!r.contains("connected"), "{r}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(lb.accept().unwrap().is_none(), "tenant b got a connection from tenant a");
    assert_eq!(victim.stats().unwrap().conns, 0);
    assert!(h.router_log(0).contains("failed authentication"), "router 0 log:\n{}", h.router_log(0));
    assert!(h.router_alive(0) && h.router_alive(1));
    // The real link between the routers still works for everyone.
    let (s, c) = fftestkit::hosts::bench_across(&h, "b", 0, 1, &["pingpong", "--iters", "100"], LONG);
    assert!(s.0 && c.0, "{}\n{}", s.2, c.2);
}

#[test]
fn stalled_handshakes_do_not_keep_routers_apart_or_flood_the_log() {
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    // Someone else on the routers' network (10.88.0.3, on host 1) opens 80
    // connections to router 0 and says nothing.
    let out = h.in_host(1, &["ip", "addr", "add", "10.88.0.3/24", "dev", "ffh"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut stall = h.in_host(1, &[bin("ffhostile").to_str().unwrap(), "stall", "10.88.0.1:7070", "10.88.0.3", "80", "8"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(stall.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("OPENED "), "{line}");
    // Router 1 links with router 0 all the same.
    let l = h.context(0, "a").listen().unwrap();
    let ctx = h.context(1, "a");
    let t = Instant::now();
    let conn = loop {
        match ctx.connect(&l.handle()) {
            Ok(Some(c)) => break c,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("the real router was kept out: {e}"),
        }
    };
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(conn);
    let _ = stall.wait();
    let log = h.router_log(0);
    let lines = log.lines().count();
    assert!(lines < 200, "{lines} log lines:\n{log}");
}

#[test]
fn a_router_with_listen_addr_needs_a_secret() {
    let out = std::process::Command::new(bin("ffrouter")).args(["--socket", "/tmp/ffnever.sock", "--listen-addr", "127.0.0.1:17071"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--peer-secret-file"), "{err}");
}
