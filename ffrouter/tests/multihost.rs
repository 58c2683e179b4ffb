//! Two hosts (network namespaces joined by a veth), a router on each,
//! containers on each host's bridge: connections between containers on
//! different hosts go router to router. Needs root.

use std::time::{Duration, Instant};

use ffcore::ErrorCode;
use fftestkit::hosts::{bench_across, TwoHosts};
use fftestkit::bin;

const LONG: Duration = Duration::from_secs(120);

fn ok(r: &(bool, String, String), what: &str) {
    assert!(r.0, "{what} failed\nstdout: {}\nstderr: {}", r.1, r.2);
}

fn two_hosts(tenants: &[&str], extra: &[&str]) -> TwoHosts {
    let mut h = TwoHosts::new();
    h.start_router(0, tenants, extra);
    h.start_router(1, tenants, extra);
    h
}

#[test]
fn containers_on_two_hosts_exchange_checksummed_data_0b_to_64mib() {
    let h = two_hosts(&["a"], &[]);
    // Every edge size from 0 B to 64 MiB, both directions at once, 16 in flight.
    let (s, c) = bench_across(&h, "a", 0, 1, &["check", "--iters", "32", "--window", "16"], LONG);
    ok(&s, "server (host 0)");
    ok(&c, "client (host 1)");
    for out in [&s.1, &c.1] {
        assert!(out.contains("RESULT mode=check messages=32") && out.contains("ok=1"), "{out}");
    }
    // And the other way round, through the link host 0 dials.
    let (s, c) = bench_across(&h, "a", 1, 0, &["semantics"], LONG);
    ok(&s, "server (host 1)");
    ok(&c, "client (host 0)");
    assert!(s.1.contains("truncation=reported"), "{}", s.1);
    // Both routers freed everything.
    for i in 0..2 {
        let ctx = h.context(i, "a");
        fftestkit::wait_for(
            || {
                let st = ctx.stats().unwrap();
                (st.listeners, st.conns, st.shared_bytes) == (0, 0, 0)
            },
            Duration::from_secs(5),
            "connections freed",
        );
    }
}

#[test]
fn tenants_and_handles_are_checked_across_hosts() {
    let h = two_hosts(&["a", "b"], &[]);
    let server = h.context(0, "b");
    let l = server.listen().unwrap();
    let handle = l.handle();
    assert_eq!(handle.addr.unwrap().to_string(), h.router_addr(0), "the handle names host 0's router");
    let connect = |tenant: &str, hd: &ffcore::Handle| {
        let ctx = h.context(1, tenant);
        let t = Instant::now();
        loop {
            match ctx.connect(hd) {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {
                    assert!(t.elapsed() < Duration::from_secs(15), "connect never finished");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    };
    // Another tenant on the other host: refused by the listener's router.
    let e = connect("a", &handle).err().expect("cross-tenant connect refused");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    // A forged nonce names nothing.
    let mut forged = handle;
    forged.nonce ^= 1;
    let e = connect("b", &forged).err().expect("forged handle refused");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // The right tenant gets through, and data flows both ways.
    let mut c = connect("b", &handle).unwrap();
    let mut s = l.accept_timeout(Duration::from_secs(10)).unwrap();
    c.send(b"over the link", 1, Some(LONG)).unwrap();
    let mut b = [0u8; 64];
    assert_eq!(s.recv(&mut b, 1, Some(LONG)).unwrap(), 13);
    assert_eq!(&b[..13], b"over the link");
    s.send(b"and back", 2, Some(LONG)).unwrap();
    assert_eq!(c.recv(&mut b, 2, Some(LONG)).unwrap(), 8);
    // Closing one end is seen by the other as on one host.
    drop(s);
    let e = c.recv(&mut b, 2, Some(Duration::from_secs(10))).err().unwrap();
    assert!(matches!(e, ffcore::Error::PeerClosed), "{e}");
    // A router nobody listens at: an error within the connect timeout.
    let mut nowhere = handle;
    nowhere.addr = Some("10.88.0.77:7070".parse().unwrap());
    let t = Instant::now();
    let e = connect("b", &nowhere).err().expect("unreachable router");
    assert_eq!(e.code(), Some(ErrorCode::Unreachable), "{e}");
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
}

#[test]
fn killing_a_router_fails_the_peers_on_the_other_host_within_seconds() {
    let mut h = two_hosts(&["a"], &[]);
    let fb = bin("ffbench");
    let fb = fb.to_str().unwrap();
    // Two pairs: one streaming each way across the hosts.
    let mut s0 = h.container(0, "a", &[fb, "serve", "flood", "--size", "65536"]);
    let h0 = s0.read_line_with("HANDLE ");
    let mut c1 = h.container(1, "a", &[fb, "connect", "flood", "--size", "65536", "--handle", &h0]);
    let mut s1 = h.container(1, "a", &[fb, "serve", "flood", "--size", "65536"]);
    let h1 = s1.read_line_with("HANDLE ");
    let mut c0 = h.container(0, "a", &[fb, "connect", "flood", "--size", "65536", "--handle", &h1]);
    for c in [&mut s0, &mut c1, &mut s1, &mut c0] {
        c.read_line_with("FLOODING");
    }
    std::thread::sleep(Duration::from_millis(300));
    // Host 0's router dies: host 1's containers (a receiver and a sender)
    // must fail with an error, not hang.
    h.kill_router(0);
    let t = Instant::now();
    let r1 = c1.finish(Duration::from_secs(20));
    let r2 = s1.finish(Duration::from_secs(20));
    let took = t.elapsed();
    assert!(!r1.0 && r1.2.contains("peer closed"), "sender on host 1: {}", r1.2);
    assert!(!r2.0 && r2.2.contains("peer closed"), "receiver on host 1: {}", r2.2);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(h.router_alive(1), "the surviving router keeps serving");
    // The dead router's own clients learn it from the kernel (the router
    // held a liveness lock on the side it played).
    let t = Instant::now();
    for (c, what) in [(s0, "receiver on host 0"), (c0, "sender on host 0")] {
        let r = c.finish(Duration::from_secs(20));
        assert!(!r.0 && r.2.contains("peer closed"), "{what}: {}", r.2);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[test]
fn routers_with_different_peer_secrets_do_not_link() {
    let dir = std::env::temp_dir().join(format!("ffsecret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s1, s2) = (dir.join("one"), dir.join("two"));
    std::fs::write(&s1, "correct horse battery staple\n").unwrap();
    std::fs::write(&s2, "another secret of enough length\n").unwrap();
    let connect = |h: &TwoHosts| {
        let l = h.context(0, "a").listen().unwrap();
        let ctx = h.context(1, "a");
        let t = Instant::now();
        loop {
            match ctx.connect(&l.handle()) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {
                    assert!(t.elapsed() < Duration::from_secs(15), "connect never finished");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    };
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &["--peer-secret-file", s1.to_str().unwrap()]);
    h.start_router(1, &["a"], &["--peer-secret-file", s2.to_str().unwrap()]);
    let e = connect(&h).err().expect("routers with different secrets refuse each other");
    assert_eq!(e.code(), Some(ErrorCode::Unreachable), "{e}");
    // Tenants learn no more than from an address where nothing listens
    // (the routers' logs say why).
    assert!(e.to_string().contains("no FreeFlow router answered"), "{e}");
    drop(h);
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &["--peer-secret-file", s1.to_str().unwrap()]);
    h.start_router(1, &["a"], &["--peer-secret-file", s1.to_str().unwrap()]);
    connect(&h).expect("the same secret links");
    let _ = std::fs::remove_dir_all(&dir);
}
