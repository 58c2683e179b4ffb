//! End-to-end tests: a real router process, clients in namespace-isolated
//! containers (tools/ffcontainer), handles passed out of band. Needs root.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ffcore::proto::{self, Reply, Request, HEADER_LEN, MAX_BODY};
use ffcore::{Error, ErrorCode, Handle};
use fftestkit::{bench_pair, bin, Container, RouterProc};

const LONG: Duration = Duration::from_secs(240);

fn ok(r: &(bool, String, String), what: &str) {
    assert!(r.0, "{what} failed\nstdout: {}\nstderr: {}", r.1, r.2);
}

#[test]
fn two_containers_exchange_checksummed_data_0b_to_64mib_32_in_flight() {
    let r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    // 48 messages each way: every edge size from 0 B to 64 MiB three times.
    let (s, c) = bench_pair(&d, &d, &["check", "--iters", "48", "--window", "32"], LONG);
    ok(&s, "server");
    ok(&c, "client");
    for out in [&s.1, &c.1] {
        assert!(out.contains("RESULT mode=check messages=48"), "{out}");
        assert!(out.contains("ok=1"), "{out}");
    }
    // Everything the pair held is freed.
    let st = r.context("a").stats().unwrap();
    assert_eq!((st.listeners, st.conns, st.regions, st.shared_bytes), (0, 0, 0, 0), "{st:?}");
}

#[test]
fn sends_before_receives_zero_bytes_and_truncation_across_containers() {
    let r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let (s, c) = bench_pair(&d, &d, &["semantics"], LONG);
    ok(&s, "server");
    ok(&c, "client");
    assert!(s.1.contains("truncation=reported"), "{}", s.1);
}

#[test]
fn sigkill_mid_transfer_leaves_router_serving_and_frees_everything() {
    let mut r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let fb = bin("ffbench");
    let fb = fb.to_str().unwrap();
    let mut server = Container::run(&d, &[fb, "serve", "flood", "--size", "1048576"]);
    let handle = server.read_line_with("HANDLE ");
    let mut client = Container::run(&d, &[fb, "connect", "flood", "--size", "1048576", "--handle", &handle]);
    client.read_line_with("FLOODING");
    client.wait_started();
    std::thread::sleep(Duration::from_millis(300)); // mid-transfer
    client.kill();
    let c = client.finish(Duration::from_secs(10));
    assert!(!c.0, "killed client cannot succeed");
    // The survivor gets an error promptly, not a hang.
    let t = std::time::Instant::now();
    let s = server.finish(Duration::from_secs(10));
    assert!(!s.0, "server must report the dead peer");
    assert!(s.2.contains("peer closed"), "server stderr: {}", s.2);
    assert!(t.elapsed() < Duration::from_secs(5), "error took {:?}", t.elapsed());
    assert!(r.alive(), "router survived");
    let st = r.context("a").stats().unwrap();
    assert_eq!((st.clients, st.listeners, st.conns, st.shared_bytes), (1, 0, 0, 0), "only the probe remains: {st:?}");
    // Others are still served.
    let (s, c) = bench_pair(&d, &d, &["pingpong", "--iters", "1000"], LONG);
    ok(&s, "server after kill");
    ok(&c, "client after kill");
}

#[test]
fn tenant_a_cannot_connect_to_tenant_b_or_forge_handles() {
    let r = RouterProc::start(&["a", "b"], &[]);
    let fb = bin("ffbench");
    let fb = fb.to_str().unwrap();
    let mut server = Container::run(&r.tenant_dir("b"), &[fb, "serve", "pingpong"]);
    let handle = server.read_line_with("HANDLE ");
    let intruder = Container::run(&r.tenant_dir("a"), &[fb, "connect", "pingpong", "--handle", &handle]);
    let (okk, _, err) = intruder.finish(Duration::from_secs(30));
    assert!(!okk);
    assert!(err.contains("PermissionDenied") && err.contains("another tenant"), "{err}");
    // A forged handle (right listener id, guessed nonce) names nothing.
    let mut h = Handle::from_hex(&handle).unwrap();
    h.nonce ^= 1;
    let e = r.context("b").connect(&h).err().expect("forged handle refused");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // The other tenant's socket directory is not even visible.
    let other = r.socket("b");
    let probe = Container::run(&r.tenant_dir("a"), &["sh", "-c", &format!("test ! -e {} && test -S /run/freeflow/ffrouter.sock", other.display())]);
    let p = probe.finish(Duration::from_secs(30));
    ok(&p, "tenant a sees only its own socket");
    drop(server);
}

/// Writes raw bytes on a fresh control connection and reads what comes back.
fn raw(r: &RouterProc, bytes: &[u8], close_write: bool) -> (Vec<u8>, bool) {
    let mut s = UnixStream::connect(r.socket("a")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    // The router hangs up after its error reply; unread garbage on our side
    // of the socket turns that into a reset rather than a clean EOF.
    let res = s.read_to_end(&mut out);
    let closed = match res {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    (out, closed)
}

fn error_code(reply: &[u8]) -> ErrorCode {
    let body = &reply[HEADER_LEN..];
    match proto::decode_body::<Reply>(body).unwrap() {
        Reply::Error { code, .. } => code,
        r => panic!("expected an error reply, got {r:?}"),
    }
}

#[test]
fn garbage_truncated_and_oversized_frames_get_errors_and_router_keeps_serving() {
    let mut r = RouterProc::start(&["a"], &[]);
    // Garbage: an error reply, then the connection is closed.
    let (out, closed) = raw(&r, b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxxxxx", false);
    assert!(closed);
    assert_eq!(error_code(&out), ErrorCode::BadRequest);
    // Oversized length.
    let mut f = proto::Header::encode(0).to_vec();
    f[8..12].copy_from_slice(&((MAX_BODY as u32) + 1).to_le_bytes());
    let (out, _) = raw(&r, &f, false);
    assert_eq!(error_code(&out), ErrorCode::BadRequest);
    // Unknown version.
    let mut f = proto::encode(&Request::Hello { version: 1 });
    f[4] = 77;
    let (out, _) = raw(&r, &f, false);
    assert_eq!(error_code(&out), ErrorCode::Version);
    // Truncated: the header promises more than arrives before EOF.
    let f = proto::encode(&Request::Hello { version: 1 });
    let (out, closed) = raw(&r, &f[..f.len() - 1], true);
    assert!(closed && out.len() >= HEADER_LEN, "an error reply, then close");
    // A well-framed but undecodable body after Hello: error reply, and the
    // connection stays usable.
    let mut s = UnixStream::connect(r.socket("a")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = proto::encode(&Request::Hello { version: proto::VERSION });
    s.write_all(&hello).unwrap();
    let mut junk = proto::Header::encode(3).to_vec();
    junk.extend_from_slice(&[250, 251, 252]);
    s.write_all(&junk).unwrap();
    s.write_all(&proto::encode(&Request::Stats)).unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let len = proto::Header::decode(&h).unwrap().len;
        let mut b = vec![0u8; len];
        s.read_exact(&mut b).unwrap();
        replies.push(proto::decode_body::<Reply>(&b).unwrap());
    }
    assert!(matches!(replies[0], Reply::Welcome { .. }));
    assert!(matches!(replies[1], Reply::Error { code: ErrorCode::BadRequest, .. }));
    assert!(matches!(replies[2], Reply::Stats(_)));
    drop(s);
    // Requests for objects that are not yours, or do not exist.
    let ctx = r.context("a");
    let e = ctx.connect(&Handle { router_id: [0; 16], listener: 1, nonce: 1, addr: None }).err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(r.alive());
    // Still serving real clients.
    let d = r.tenant_dir("a");
    let (s, c) = bench_pair(&d, &d, &["pingpong", "--iters", "1000"], LONG);
    ok(&s, "server");
    ok(&c, "client");
}

#[test]
fn missing_router_is_a_clear_error() {
    let e = ffcore::Context::with_socket("/nonexistent/ffrouter.sock").err().unwrap();
    assert!(matches!(e, Error::NoRouter { .. }));
    assert!(e.to_string().contains("FF_ROUTER_SOCKET"), "{e}");
}

#[test]
fn shadow_regions_are_shared_with_the_router_and_freed() {
    let r = RouterProc::start(&["a"], &[]);
    let ctx = r.context("a");
    let reg = ctx.alloc_region(1 << 20).unwrap();
    assert_eq!(reg.len(), 1 << 20);
    unsafe { reg.as_ptr().write_bytes(0xab, 1 << 20) };
    assert_eq!(ctx.stats().unwrap().shared_bytes, (1 << 20) + ffcore::shm::region_header() as u64);
    // Absurd sizes are refused, not attempted.
    let e = ctx.alloc_region(1 << 41).err().unwrap();
    assert!(e.to_string().contains("out of range") || e.code().is_some(), "{e}");
    drop(reg);
    assert_eq!(ctx.stats().unwrap().shared_bytes, 0);
}

#[test]
fn polling_accept_costs_no_router_round_trip_until_a_peer_connects() {
    let r = RouterProc::start(&["a"], &[]);
    let server = r.context("a");
    let l = server.listen().unwrap();
    assert!(l.accept().unwrap().is_none());
    let before = server.stats().unwrap().requests;
    for _ in 0..10_000 {
        assert!(l.accept().unwrap().is_none());
    }
    let after = server.stats().unwrap().requests;
    assert_eq!(after - before, 1, "only the stats request itself reached the router");
    let client = r.context("a");
    let mut c = client.connect(&l.handle()).unwrap().expect("connect is immediate on one host");
    let mut s = l.accept().unwrap().expect("the queued connection is seen at once");
    c.send(b"hello", 1, None).unwrap();
    let mut b = [0u8; 5];
    assert_eq!(s.recv(&mut b, 1, None).unwrap(), 5);
    assert_eq!(&b, b"hello");
}

#[test]
fn router_killed_and_restarted_survivors_get_errors_and_new_clients_are_served() {
    let mut r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let fb = bin("ffbench");
    let fb = fb.to_str().unwrap();
    let mut server = Container::run(&d, &[fb, "serve", "flood", "--size", "65536"]);
    let handle = server.read_line_with("HANDLE ");
    let mut client = Container::run(&d, &[fb, "connect", "flood", "--size", "65536", "--handle", &handle]);
    client.read_line_with("FLOODING");
    server.read_line_with("FLOODING"); // accepted: both ends are on the data path
    client.wait_started();
    // The router dies; the data path (shared memory) does not need it.
    r.kill();
    std::thread::sleep(Duration::from_millis(300));
    // Now the sender dies too: nobody is left to tell the receiver, yet it
    // learns it from the kernel (the peer's liveness lock) within seconds.
    client.kill();
    let t = std::time::Instant::now();
    let s = server.finish(Duration::from_secs(15));
    assert!(!s.0 && s.2.contains("peer closed"), "server: {}", s.2);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    drop(client);
    // A restarted router serves new clients.
    r.restart();
    let (s, c) = bench_pair(&d, &d, &["check", "--iters", "16", "--max-size", "1048576"], LONG);
    ok(&s, "server after restart");
    ok(&c, "client after restart");
}

/// A raw control connection that has said Hello.
fn attached(r: &RouterProc) -> UnixStream {
    let s = UnixStream::connect(r.socket("a")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (rep, _) = rpc(&s, &Request::Hello { version: proto::VERSION }, &[]);
    assert!(matches!(rep, Reply::Welcome { .. }));
    s
}

fn rpc(s: &UnixStream, req: &Request, fds: &[std::os::fd::BorrowedFd]) -> (Reply, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::AsFd;
    ffcore::fdpass::send_frame(s.as_fd(), &proto::encode(req), fds).unwrap();
    let (_, body, fds) = ffcore::fdpass::recv_frame(s.as_fd()).unwrap().unwrap();
    (proto::decode_body::<Reply>(&body).unwrap(), fds)
}

#[test]
fn shared_files_cannot_be_resized_and_foreign_descriptors_are_refused() {
    let mut r = RouterProc::start(&["a"], &[]);
    let s = attached(&r);
    let (rep, mut fds) = rpc(&s, &Request::AllocRegion { len: 1 << 16 }, &[]);
    assert!(matches!(rep, Reply::Region { len: 65536, .. }), "{rep:?}");
    let f = std::fs::File::from(fds.pop().unwrap());
    // Shrinking (which would make the router fault on its mapping) and
    // growing are refused by the seals the router put on the file.
    let e = f.set_len(4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert_eq!(f.set_len(1 << 30).unwrap_err().raw_os_error(), Some(libc::EPERM));
    // Same for a connection's rings.
    let (rep, _) = rpc(&s, &Request::Listen, &[]);
    let Reply::Listening { listener, nonce } = rep else { panic!("{rep:?}") };
    let router_id = r.context("a").listen().unwrap().handle().router_id;
    let (rep, mut fds) = rpc(&s, &Request::Connect { router_id, listener, nonce }, &[]);
    assert!(matches!(rep, Reply::Connected { .. }), "{rep:?}");
    let f = std::fs::File::from(fds.pop().unwrap());
    assert_eq!(f.set_len(0).unwrap_err().raw_os_error(), Some(libc::EPERM));
    // A second Hello is refused.
    assert!(matches!(rpc(&s, &Request::Hello { version: 1 }, &[]).0, Reply::Error { .. }));
    finish_fd_checks(&mut r, &s);
}

fn finish_fd_checks(r: &mut RouterProc, s: &UnixStream) {
    use std::os::fd::AsFd;
    // Descriptors a client sends are closed unread, with an error reply.
    let (rd, _wr) = std::io::pipe().unwrap();
    let (rep, _) = rpc(s, &Request::Stats, &[rd.as_fd()]);
    assert!(matches!(rep, Reply::Error { code: ErrorCode::BadRequest, .. }), "{rep:?}");
    // The connection is still in step and the router unharmed.
    assert!(matches!(rpc(s, &Request::Stats, &[]).0, Reply::Stats(_)));
    assert!(r.alive());
}

#[test]
fn registered_memory_is_checked_for_bounds_and_keys() {
    let r = RouterProc::start(&["a"], &[]);
    let ctx = r.context("a");
    let buf = vec![0u8; 4096];
    let k = ctx.register(buf.as_ptr(), buf.len()).unwrap();
    ctx.check_range(k, buf.as_ptr(), 4096).unwrap();
    ctx.check_range(k, unsafe { buf.as_ptr().add(100) }, 3996).unwrap();
    assert!(ctx.check_range(k, unsafe { buf.as_ptr().add(100) }, 3997).is_err(), "out of bounds");
    assert!(ctx.check_range(k, unsafe { buf.as_ptr().sub(1) }, 10).is_err(), "below the start");
    assert!(ctx.check_range(ffcore::MemKey(k.0 + 1000), buf.as_ptr(), 1).is_err(), "unknown key");
    ctx.deregister(k).unwrap();
    assert!(ctx.check_range(k, buf.as_ptr(), 1).is_err(), "stale key");
    assert!(ctx.deregister(k).is_err(), "double deregister");
    // Keys are per process: another client's keys mean nothing here.
    let other = r.context("a");
    let k2 = other.register(buf.as_ptr(), 16).unwrap();
    other.check_range(k2, buf.as_ptr(), 16).unwrap();
    assert!(ctx.check_range(k2, buf.as_ptr(), 16).is_err(), "another client's key is refused");
}

#[test]
fn rate_limits_hold_each_container_to_its_share() {
    // Tenant a's containers may send 150 MB/s each, tenant b's 300 MB/s; a
    // pair of containers of each tenant streams at the same time.
    let r = RouterProc::start(&["a", "b"], &["--rate-limit", "a=150M", "--rate-limit", "b=300M"]);
    let run = |tenant: &'static str, iters: &'static str| {
        let d = r.tenant_dir(tenant);
        std::thread::spawn(move || bench_pair(&d, &d, &["stream", "--size", "1048576", "--iters", iters, "--window", "8"], LONG))
    };
    let a = run("a", "300");
    let b = run("b", "600");
    for (t, want, h) in [("a", 150.0, a), ("b", 300.0, b)] {
        let (s, c) = h.join().unwrap();
        ok(&s, "server");
        ok(&c, "client");
        let mbs: f64 = c.1.split("mb_per_s=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        eprintln!("tenant {t}: {mbs:.1} MB/s under a {want} MB/s limit");
        // The limit holds (at most 10 % over: bursts of 5 ms); below it the
        // rate depends on the CPU the other tests running beside this one
        // leave (a top-up tick that runs late is credit lost: 134 of 150
        // MB/s once in CI, 2026-12-03), so only a container held far under
        // its share fails.
        assert!(mbs <= want * 1.10, "tenant {t}: {mbs:.1} MB/s, over its limit of {want} MB/s");
        assert!(mbs >= want * 0.75, "tenant {t}: {mbs:.1} MB/s, far under its limit of {want} MB/s");
    }
}

#[test]
fn containers_need_no_privilege_uid_or_capability() {
    // Both ends run as nobody with every capability dropped (bounding set
    // too) inside their containers: the socket and the memfds are all
    // they need.
    let r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let fb = bin("ffbench");
    let fb = fb.to_str().unwrap();
    let drop = fftestkit::AS_NOBODY;
    let mut sargv: Vec<&str> = drop.to_vec();
    sargv.extend([fb, "serve", "check", "--iters", "16", "--max-size", "4194304"]);
    let mut server = Container::run(&d, &sargv);
    let handle = server.read_line_with("HANDLE ");
    let mut cargv: Vec<&str> = drop.to_vec();
    cargv.extend([fb, "connect", "check", "--iters", "16", "--max-size", "4194304", "--handle", &handle]);
    let c = Container::run(&d, &cargv).finish(LONG);
    let s = server.finish(LONG);
    ok(&c, "unprivileged client");
    ok(&s, "unprivileged server");
    assert!(s.1.contains("ok=1"), "{}", s.1);
}

#[test]
fn a_client_that_stops_reading_is_dropped_without_stalling_others() {
    let r = RouterProc::start(&["a"], &[]);
    let probe = r.context("a");
    let s = attached(&r);
    // Pipeline requests and never read a reply: the router's replies fill
    // the socket buffer and its writes to this client block.
    s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let frame = proto::encode(&Request::Stats);
    let mut w = &s;
    let mut sent = 0;
    while sent < 200_000 && w.write_all(&frame).is_ok() {
        sent += 1;
    }
    // Others are served meanwhile.
    assert!(probe.stats().unwrap().clients >= 2);
    // After the router's write timeout the stalled client is dropped.
    let t = std::time::Instant::now();
    fftestkit::wait_for(|| probe.stats().unwrap().clients == 1, Duration::from_secs(20), "the stalled client to be dropped");
    assert!(t.elapsed() < Duration::from_secs(15));
    drop(s);
}
