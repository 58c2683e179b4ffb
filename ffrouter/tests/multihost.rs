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

/// A registered send buffer's bytes go from the sender's shadow memory
/// straight onto the wire (the sending client writes only references into
/// its ring), and arrive intact: unaligned, sizes across the reference
/// threshold, checksummed.
#[test]
fn registered_buffers_go_from_shadow_memory_onto_the_wire() {
    let h = two_hosts(&["a"], &[]);
    let (rx_ctx, tx_ctx) = (h.context(0, "a"), h.context(1, "a"));
    let l = rx_ctx.listen().unwrap();
    let t = Instant::now();
    let mut tx = loop {
        if let Some(c) = tx_ctx.connect(&l.handle()).unwrap() {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "connect");
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
    let big = 16 << 20;
    let data: Vec<u8> = (0..big + 4096).map(|i| (i * 7 + i / 4093) as u8).collect();
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { tx_ctx.register_shadow(data.as_ptr().wrapping_add(100), big) }.unwrap();
    assert_eq!(mr.why_not(), None);
    let mut out = vec![0u8; big];
    let mut moved = 0u64;
    for (off, len) in [(100, 1000), (100, 64 << 10), (4200, 1 << 20), (5000, (4 << 20) + 1), (100, big)] {
        let src = &data[off..off + len];
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(tx.send(src, 9, Some(LONG)).unwrap(), len));
            assert_eq!(rx.recv(&mut out, 9, Some(LONG)).unwrap(), len);
        });
        assert!(crc32fast::hash(&out[..len]) == crc32fast::hash(src), "{len} bytes at {off}");
        moved += len as u64;
    }
    let ring = tx_ctx.stats().unwrap().bytes_sent;
    assert!(ring < moved / 50, "{ring} bytes through the sender's ring for {moved} bytes sent");
    drop(mr);
}

fn rpc(s: &std::os::unix::net::UnixStream, req: &ffcore::proto::Request) -> (ffcore::proto::Reply, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::AsFd;
    ffcore::fdpass::send_frame(s.as_fd(), &ffcore::proto::encode(req), &[]).unwrap();
    let (_, body, fds) = ffcore::fdpass::recv_frame(s.as_fd()).unwrap().unwrap();
    (ffcore::proto::decode_body(&body).unwrap(), fds)
}

/// A client that writes a shadow-memory reference to memory its tenant may
/// not read (another tenant's region, whose key it somehow learnt) into a
/// connection to another host: the router closes that connection, sends
/// none of those bytes, and the link goes on carrying others.
#[test]
fn a_reference_to_memory_the_tenant_may_not_read_closes_only_that_connection() {
    use ffcore::proto::{Reply, Request};
    use ffcore::ring::{self, ShadowRef, REC_FIRST, REC_SHADOW};
    let h = two_hosts(&["a", "b"], &[]);
    let a1 = h.context(1, "a");
    let secret = vec![0x5au8; 1 << 20];
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { a1.register_shadow(secret.as_ptr(), secret.len()) }.unwrap();
    let key = mr.remote_read_key().unwrap();
    let b0 = h.context(0, "b");
    let l = b0.listen().unwrap();
    let hd = l.handle();

    // Tenant b's hostile client on host 1 speaks the protocol itself.
    let s = std::os::unix::net::UnixStream::connect(h.tenant_dir(1, "b").join("ffrouter.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(rpc(&s, &Request::Hello { version: ffcore::proto::VERSION }).0, Reply::Welcome { .. }));
    let req = Request::ConnectRemote { router_id: hd.router_id, addr: hd.addr.unwrap().into(), listener: hd.listener, nonce: hd.nonce };
    let t = Instant::now();
    let (ring_size, fd) = loop {
        match rpc(&s, &req) {
            (Reply::Connected { ring_size, side: 0, .. }, mut fds) => break (ring_size as usize, fds.pop().unwrap()),
            (Reply::NotReady, _) => std::thread::sleep(Duration::from_millis(1)),
            (r, _) => panic!("{r:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    };
    let mem = ffcore::shm::SharedMem::from_fd(fd, ring::file_len(ring_size)).unwrap();
    let lay = ring::Layout::new(&mem, ring_size).unwrap();
    assert_ne!(lay.side(1).caps.load(std::sync::atomic::Ordering::Acquire) & ring::CAP_SHADOW, 0, "the router reads references");
    let n = secret.len() as u64;
    let mut tx = lay.tx(0);
    assert!(tx.push_record(REC_FIRST, 3, n, &[]).unwrap());
    assert!(tx.push_record(REC_SHADOW, 3, n, &ShadowRef { key, addr: key.base, n }.encode()).unwrap());
    lay.side(1).notify();

    let mut rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let got = rx.recv(&mut buf, 3, Some(Duration::from_secs(20)));
    assert!(got.is_err(), "{got:?}");
    assert!(buf.iter().all(|&x| x == 0), "none of tenant a's bytes reached tenant b");
    fftestkit::wait_for(|| h.router_log(1).contains("bad shadow-memory reference"), Duration::from_secs(5), "the router says why");

    // The link still carries other connections.
    let b1 = h.context(1, "b");
    let l2 = b0.listen().unwrap();
    let mut c = loop {
        if let Some(c) = b1.connect(&l2.handle()).unwrap() {
            break c;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut r2 = l2.accept_timeout(Duration::from_secs(10)).unwrap();
    c.send(b"still up", 1, Some(LONG)).unwrap();
    let mut m = [0u8; 8];
    assert_eq!(r2.recv(&mut m, 1, Some(LONG)).unwrap(), 8);
    assert_eq!(&m, b"still up");
    drop(mr);
}
