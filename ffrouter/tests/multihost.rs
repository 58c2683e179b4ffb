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
    let e = connect(&h).expect_err("routers with different secrets refuse each other");
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
/// A connection from a client on host 1 (tx) to one on host 0 (rx).
#[test]
fn a_router_without_cpu_for_seconds_is_not_taken_for_dead() {
    let mut h = two_hosts(&["a"], &[]);
    let (_rx_ctx, _tx_ctx, mut rx, mut tx) = across(&h);
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut buf = vec![0u8; msg.len()];
    tx.send(&msg, 1, Some(LONG)).unwrap();
    assert_eq!(rx.recv(&mut buf, 1, Some(LONG)).unwrap(), msg.len());
    // Host 0's router gets no CPU for longer than a ping period many
    // times over (as under a load that keeps every core busy); its kernel
    // still answers for it.
    h.freeze_router(0, true);
    std::thread::sleep(Duration::from_secs(5));
    h.freeze_router(0, false);
    // The link stayed up: the connection carries data both ways, intact.
    for round in 0..4u8 {
        let m: Vec<u8> = msg.iter().map(|b| b ^ round).collect();
        tx.send(&m, 2, Some(LONG)).unwrap();
        assert_eq!(rx.recv(&mut buf, 2, Some(LONG)).unwrap(), m.len());
        assert!(buf == m, "round {round}: bytes changed");
        rx.send(&m, 3, Some(LONG)).unwrap();
        assert_eq!(tx.recv(&mut buf, 3, Some(LONG)).unwrap(), m.len());
        assert!(buf == m, "round {round} back: bytes changed");
    }
    for i in 0..2 {
        assert!(!h.router_log(i).contains("is down"), "host {i}'s router took the link for dead:\n{}", h.router_log(i));
    }
}

fn across(h: &TwoHosts) -> (ffcore::Context, ffcore::Context, ffcore::Conn, ffcore::Conn) {
    let (rx_ctx, tx_ctx) = (h.context(0, "a"), h.context(1, "a"));
    let l = rx_ctx.listen().unwrap();
    let t = Instant::now();
    let tx = loop {
        if let Some(c) = tx_ctx.connect(&l.handle()).unwrap() {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "connect");
        std::thread::sleep(Duration::from_millis(1));
    };
    let rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
    (rx_ctx, tx_ctx, rx, tx)
}

/// `n` bytes from a page boundary of `raw`.
fn page_aligned(raw: &mut [u8], n: usize) -> &mut [u8] {
    let skip = (4096 - raw.as_ptr() as usize % 4096) % 4096;
    &mut raw[skip..skip + n]
}

#[test]
fn registered_buffers_go_between_shadow_memory_and_the_wire() {
    let h = two_hosts(&["a"], &[]);
    let (rx_ctx, tx_ctx, mut rx, mut tx) = across(&h);
    let big = 16 << 20;
    let data: Vec<u8> = (0..big + 4096).map(|i| (i * 7 + i / 4093) as u8).collect();
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { tx_ctx.register_shadow(data.as_ptr().wrapping_add(100), big) }.unwrap();
    assert_eq!(mr.why_not(), None);
    // The receiver's buffer: registered from a page boundary, so that its
    // router writes into it straight from the link.
    let mut raw = vec![0u8; big + 8192];
    let out = page_aligned(&mut raw, big);
    // SAFETY: as above.
    let rmr = unsafe { rx_ctx.register_shadow(out.as_ptr(), big) }.unwrap();
    assert_eq!(rmr.why_not(), None);
    let mut moved = 0u64;
    let ring0 = rx_ctx.stats().unwrap().bytes_sent;
    for (off, len) in [(100, 1000), (100, 64 << 10), (4200, 1 << 20), (5000, (4 << 20) + 1), (100, big)] {
        let src = &data[off..off + len];
        out[..len].fill(0);
        // The receive is posted before the message leaves (a receive
        // posted after its message reached the router takes the ring).
        // SAFETY: `out` outlives the request (waited for below).
        let r = unsafe { rx.irecv(out.as_mut_ptr(), out.len(), 9) }.unwrap();
        std::thread::sleep(Duration::from_millis(100));
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(tx.send(src, 9, Some(LONG)).unwrap(), len));
            assert_eq!(rx.wait(r, Some(LONG)).unwrap(), len);
        });
        assert!(crc32fast::hash(&out[..len]) == crc32fast::hash(src), "{len} bytes at {off}");
        moved += len as u64;
    }
    let ring = tx_ctx.stats().unwrap().bytes_sent;
    assert!(ring < moved / 50, "{ring} bytes through the sender's ring for {moved} bytes sent");
    let ring = rx_ctx.stats().unwrap().bytes_sent - ring0;
    assert!(ring < moved / 50, "{ring} bytes through the receiver's ring for {moved} bytes received");
    // Unregistered, the receiver's ring carries them again.
    drop(rmr);
    let mut plain = vec![0u8; 1 << 20];
    let ring0 = rx_ctx.stats().unwrap().bytes_sent;
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(tx.send(&data[..1 << 20], 9, Some(LONG)).unwrap(), 1 << 20));
        assert_eq!(rx.recv(&mut plain, 9, Some(LONG)).unwrap(), 1 << 20);
    });
    assert!(plain[..] == data[..1 << 20]);
    assert!(rx_ctx.stats().unwrap().bytes_sent - ring0 >= 1 << 20, "the ring path");
    drop(mr);
}

#[test]
fn receives_posted_in_shadow_memory_keep_order_when_a_tag_mismatch_shifts_them() {
    // Receives posted to the router name the message they expect (the n-th
    // receive takes the n-th message); one that fails on a tag leaves its
    // message to the next, so every later post names the wrong one. The
    // router may already have written a message into the wrong buffer:
    // the client must withdraw the posts and still deliver every message
    // intact, in order, to the receive it belongs to.
    let h = two_hosts(&["a"], &[]);
    let (rx_ctx, _tx_ctx, mut rx, mut tx) = across(&h);
    const N: usize = 6;
    let size = |i: usize| (64 << 10) + 4096 * i + 17 * i;
    let cap = 128 << 10;
    let mut raw = vec![0u8; N * (cap + 4096) + 4096];
    let region = page_aligned(&mut raw, N * (cap + 4096));
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { rx_ctx.register_shadow(region.as_ptr(), region.len()) }.unwrap();
    assert_eq!(mr.why_not(), None);
    let bufs: Vec<*mut u8> = (0..N).map(|i| region[i * (cap + 4096)..].as_mut_ptr()).collect();
    // Messages: tags 5, 9, 9, ...; receives: 9 (fails on message 0 and
    // leaves it), then 5, 9, 9, ...: receive k+1 takes message k.
    let tags_in = |i: usize| if i == 0 { 5 } else { 9 };
    let tags_rx = |k: usize| if k == 1 { 5 } else { 9 };
    let reqs: Vec<ffcore::Req> = (0..N).map(|k| unsafe { rx.irecv(bufs[k], cap, tags_rx(k)) }.unwrap()).collect();
    // Let the posts reach the router before the messages do.
    for _ in 0..20 {
        rx.progress();
        std::thread::sleep(Duration::from_millis(10));
    }
    let msgs: Vec<Vec<u8>> = (0..N - 1).map(|i| (0..size(i)).map(|j| (j * 13 + i * 101 + j / 511) as u8).collect()).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(tx.send(m, tags_in(i), Some(LONG)).unwrap(), m.len());
            }
        });
        // Let the messages reach the receiver's router (which writes some
        // into the wrong posted buffers) before the receiver looks.
        std::thread::sleep(Duration::from_millis(500));
        let mut reqs = reqs.into_iter();
        let r0 = reqs.next().unwrap();
        assert!(matches!(rx.wait(r0, Some(LONG)), Err(ffcore::Error::TagMismatch { got: 5, want: 9 })));
        for (k, r) in reqs.enumerate().take(N - 1) {
            let k = k + 1;
            let i = k - 1;
            let n = rx.wait(r, Some(LONG)).unwrap_or_else(|e| panic!("receive {k}: {e}"));
            assert_eq!(n, size(i), "receive {k}");
            // SAFETY: the receive completed; the buffer holds n bytes.
            let got = unsafe { std::slice::from_raw_parts(bufs[k], n) };
            assert!(got == &msgs[i][..], "receive {k} holds message {i}");
        }
    });
    drop(rx);
    drop(mr);
}

/// A client of `tenant` on host `i` that speaks the protocol itself.
fn raw_client(h: &TwoHosts, i: usize, tenant: &str) -> std::os::unix::net::UnixStream {
    use ffcore::proto::{Reply, Request};
    let s = std::os::unix::net::UnixStream::connect(h.tenant_dir(i, tenant).join("ffrouter.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(rpc(&s, &Request::Hello { version: ffcore::proto::VERSION }).0, Reply::Welcome { .. }));
    s
}

/// Connects a raw client to the listener `hd` names on the other host:
/// the connection file (mapped) and its ring size.
fn raw_connect(s: &std::os::unix::net::UnixStream, hd: &ffcore::Handle) -> (ffcore::shm::SharedMem, usize) {
    use ffcore::proto::{Reply, Request};
    let req = Request::ConnectRemote { router_id: hd.router_id, addr: hd.addr.unwrap().into(), listener: hd.listener, nonce: hd.nonce };
    let t = Instant::now();
    loop {
        match rpc(s, &req) {
            (Reply::Connected { ring_size, side: 0, forwarded, .. }, mut fds) => {
                assert!(forwarded, "the router says it plays the other side");
                let ring_size = ring_size as usize;
                let mem = ffcore::shm::SharedMem::from_fd(fds.pop().unwrap(), ffcore::ring::file_len(ring_size)).unwrap();
                return (mem, ring_size);
            }
            (Reply::NotReady, _) => std::thread::sleep(Duration::from_millis(1)),
            (r, _) => panic!("{r:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
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
    let s = raw_client(&h, 1, "b");
    let (mem, ring_size) = raw_connect(&s, &hd);
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

#[test]
fn posted_receives_are_written_only_within_the_posters_writable_regions() {
    use ffcore::proto::{Reply, Request};
    use ffcore::ring::{self, PostRef, REC_FIRST, REC_POST};
    let h = two_hosts(&["a", "b"], &[]);
    // Tenant a's registered buffer on host 0, whose read-write key leaked.
    let a0 = h.context(0, "a");
    let victim = vec![0x11u8; 1 << 20];
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { a0.register_shadow(victim.as_ptr(), victim.len()) }.unwrap();
    let a_key = mr.remote_key().unwrap();
    let b1 = h.context(1, "b");
    let l = b1.listen().unwrap();
    let hd = l.handle();

    // Tenant b's hostile client on host 0 speaks the protocol itself.
    let s = raw_client(&h, 0, "b");
    let (Reply::Region { region, len, key, read_key }, mut fds) = rpc(&s, &Request::AllocRegion { len: 1 << 20 }) else { panic!("region") };
    let own = ffcore::shm::SharedMem::from_fd(fds.pop().unwrap(), ffcore::shm::region_header() + len as usize).unwrap();
    let (mem, ring_size) = raw_connect(&s, &hd);
    let lay = ring::Layout::new(&mem, ring_size).unwrap();
    assert_ne!(lay.side(1).caps.load(std::sync::atomic::Ordering::Acquire) & ring::CAP_PLACE, 0, "the router takes posts");
    let mut tx = lay.tx(0);
    let base = 0x7000_0000u64;
    let own_key = |k: u64| ffcore::RemoteKey { router_id: a_key.router_id, region, key: k, base };
    // Message 0 into tenant a's buffer, message 1 into our own region
    // through its read-only key: neither may be written.
    let posts = [
        PostRef { key: a_key, addr: a_key.base, cap: 1 << 20, idx: 0, gen: 0 },
        PostRef { key: own_key(read_key), addr: base, cap: 1 << 20, idx: 1, gen: 0 },
    ];
    for p in &posts {
        assert!(tx.push_record(REC_POST, 0, 0, &p.encode()).unwrap());
    }
    lay.side(1).notify();
    let mut c = l.accept_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.send(&vec![0x77u8; 64 << 10], 0, Some(LONG)).unwrap();
    c.send(&vec![0x88u8; 64 << 10], 0, Some(LONG)).unwrap();
    // Both arrive in the ring, as ordinary messages.
    let mut rx = lay.rx(0);
    for want in [0x77u8, 0x88] {
        let mut got = 0;
        let t = Instant::now();
        while got < 64 << 10 {
            match rx.peek().unwrap() {
                Some(r) => {
                    assert!(r.kind == REC_FIRST || r.kind == ring::REC_CONT, "record kind {}", r.kind);
                    let p = unsafe { std::slice::from_raw_parts(rx.payload(), r.len) };
                    assert!(p.iter().all(|&x| x == want));
                    got += r.len;
                    rx.consume(r.len);
                    lay.side(1).notify();
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
            assert!(t.elapsed() < Duration::from_secs(20), "message {want:#x}");
        }
    }
    assert!(victim.iter().all(|&x| x == 0x11), "tenant a's buffer untouched");
    let data = unsafe { std::slice::from_raw_parts(own.as_ptr().add(ffcore::shm::region_header()), 1 << 20) };
    assert!(data.iter().all(|&x| x == 0), "nothing written through a read-only key");
    // A post beyond the region closes the connection, and says why.
    let beyond = PostRef { key: own_key(key), addr: base + 4096, cap: 1 << 20, idx: 2, gen: 0 };
    assert!(tx.push_record(REC_POST, 0, 0, &beyond.encode()).unwrap());
    lay.side(1).notify();
    fftestkit::wait_for(|| h.router_log(0).contains("bad posted receive: outside its region"), Duration::from_secs(5), "the router says why");
    let mut b = [0u8; 1];
    assert!(c.recv(&mut b, 0, Some(Duration::from_secs(20))).is_err(), "the connection is closed");
    drop(mr);
}

#[test]
fn a_dropped_connection_gets_no_more_bytes_into_its_posted_receives() {
    let h = two_hosts(&["a"], &[]);
    let (rx_ctx, _tx_ctx, mut rx, mut tx) = across(&h);
    let big = 32 << 20;
    let mut raw = vec![0u8; big + 8192];
    let buf = page_aligned(&mut raw, big);
    // SAFETY: our own heap memory, kept until the end of the test.
    let mr = unsafe { rx_ctx.register_shadow(buf.as_ptr(), big) }.unwrap();
    assert_eq!(mr.why_not(), None);
    let r = unsafe { rx.irecv(buf.as_mut_ptr(), big, 0) }.unwrap();
    rx.progress();
    let data = vec![0x5au8; big];
    let data = &data;
    std::thread::scope(|s| {
        s.spawn(move || {
            // Fails or not, depending on when the receiver went.
            let _ = tx.send(data, 0, Some(LONG));
        });
        // Drop once the router has started writing into the buffer.
        let t = Instant::now();
        while buf.iter().step_by(4096).all(|&x| x == 0) {
            assert!(t.elapsed() < Duration::from_secs(20), "nothing arrived");
            std::thread::yield_now();
        }
        let _ = r;
        drop(rx);
        // The buffer is ours again: nothing may write into it any more.
        buf.fill(0xee);
        std::thread::sleep(Duration::from_millis(500));
        assert!(buf.iter().all(|&x| x == 0xee), "the router wrote into a dropped connection's receive");
    });
    drop(mr);
}

/// A message going into a posted receive has its credit returned when it
/// starts, before its bytes arrive; if the receiving client closes
/// meanwhile, the rest is dropped, never written to the ring (which it
/// would overflow): the link stays up. Rings of 64 KiB, and the receiving
/// router frozen while megabytes of the message pile up in the link.
#[test]
fn a_client_closing_while_its_posted_receive_fills_keeps_the_link_up() {
    use ffcore::proto::{Reply, Request};
    use ffcore::ring::{self, PostRef};
    let mut h = two_hosts(&["a"], &["--peer-ring-size", "65536"]);
    let a1 = h.context(1, "a");
    let l = a1.listen().unwrap();
    let big = 16usize << 20;
    // The receiving client on host 0 speaks the protocol itself: a region
    // of its own, a post for message 0 in it.
    let s = raw_client(&h, 0, "a");
    let (Reply::Region { region, len, key, .. }, mut fds) = rpc(&s, &Request::AllocRegion { len: big as u64 }) else { panic!("region") };
    let own = ffcore::shm::SharedMem::from_fd(fds.pop().unwrap(), ffcore::shm::region_header() + len as usize).unwrap();
    let (mem, ring_size) = raw_connect(&s, &l.handle());
    assert_eq!(ring_size, 65536);
    let lay = ring::Layout::new(&mem, ring_size).unwrap();
    let base = 0x7000_0000u64;
    let rkey = ffcore::RemoteKey { router_id: l.handle().router_id, region, key, base };
    let post = PostRef { key: rkey, addr: base, cap: big as u64, idx: 0, gen: 0 };
    assert!(lay.tx(0).push_record(ring::REC_POST, 0, 0, &post.encode()).unwrap());
    lay.side(1).notify();
    let mut c = l.accept_timeout(Duration::from_secs(10)).unwrap();
    // It also sends more than host 1 will take (c reads nothing), so that
    // its router's pump, which cannot forward it all, stays with the
    // connection after the close and its frames keep coming to the
    // receiver thread.
    let mut tx = lay.tx(0);
    let chunk = vec![0x33u8; 16 << 10];
    let (mut pushed, mut full_since) = (0, None::<Instant>);
    while full_since.is_none_or(|t| t.elapsed() < Duration::from_millis(200)) {
        let kind = if pushed == 0 { ring::REC_FIRST } else { ring::REC_CONT };
        if tx.push_record(kind, 1, 64 << 20, &chunk).unwrap() {
            pushed += 1;
            full_since = None;
            lay.side(1).notify();
        } else {
            full_since.get_or_insert_with(Instant::now);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(pushed < 4096, "host 1 took everything");
    }
    let data = unsafe { std::slice::from_raw_parts(own.as_ptr().add(ffcore::shm::region_header()), big) };
    let msg = vec![0x77u8; big];
    let msg = &msg;
    std::thread::scope(|sc| {
        sc.spawn(move || {
            // Fails or not, depending on when the receiver went.
            let _ = c.send(msg, 0, Some(LONG));
        });
        let t = Instant::now();
        // The router writes it from another thread: read it afresh each time.
        // SAFETY: `data` stays mapped (own holds it); a byte read.
        while unsafe { data.as_ptr().read_volatile() } != 0x77 {
            assert!(t.elapsed() < Duration::from_secs(20), "nothing was placed");
            std::thread::yield_now();
        }
        // Megabytes more come while host 0's router cannot read them.
        h.freeze_router(0, true);
        std::thread::sleep(Duration::from_millis(500));
        lay.side(0).close();
        h.freeze_router(0, false);
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(data.contains(&0), "the whole message was placed before the client closed: the test proves nothing");
    // The link still carries a new connection's bytes.
    let (_c0, _c1, mut rx2, mut tx2) = across(&h);
    let m: Vec<u8> = (0..(1 << 20) + 5).map(|i| (i * 13 + i / 1021) as u8).collect();
    let mut got = vec![0u8; m.len()];
    std::thread::scope(|sc| {
        sc.spawn(|| tx2.send(&m, 7, Some(LONG)).unwrap());
        assert_eq!(rx2.recv(&mut got, 7, Some(LONG)).unwrap(), m.len());
    });
    assert!(got == m, "bytes changed on the new connection");
    for i in 0..2 {
        assert!(!h.router_log(i).contains("is down"), "host {i}'s router took the link for dead:\n{}", h.router_log(i));
    }
}
