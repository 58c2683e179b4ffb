//! ffhostile: a hostile tenant, for the security tests. It talks the
//! router protocol itself (frames, descriptors, shared files), not through
//! ffcore's client, and does what a tenant must not get away with. Each
//! subcommand prints `KEY value...` lines the tests read.
//!
//! ```text
//! ffhostile exhaust                     regions, then clients, until refused; holds them
//! ffhostile half-frame                  attaches, sends half a frame, waits to be dropped
//! ffhostile corrupt-page HANDLE         connects, zeroes the control page, exits
//! ffhostile victim                      listens (HANDLE ...), accepts, waits for data
//! ffhostile connect HANDLE [IP:PORT]    connects to HANDLE, maybe re-addressed
//! ffhostile relay PORT TARGET HANDLE [T:L:N]
//!                                       connects to HANDLE re-addressed to itself (PORT),
//!                                       relaying the router's link streams to TARGET, and
//!                                       maybe injecting a CONNECT for tenant T, listener L, nonce N
//! ffhostile stall TARGET FROM N SECS    opens N silent TCP connections from FROM
//! ffhostile tcp-listen IP:PORT SECS     a TCP server that is not a router
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ffcore::fdpass::{recv_frame, send_frame};
use ffcore::proto::{self, Reply, Request, VERSION};
use ffcore::Handle;

fn socket() -> String {
    ffcore::client::socket_path()
}

/// One raw control connection.
struct Raw {
    sock: UnixStream,
}

impl Raw {
    /// Connects and says Hello; Err with the router's refusal.
    fn attach() -> Result<Raw, String> {
        let sock = UnixStream::connect(socket()).map_err(|e| format!("connect: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = Raw { sock };
        match r.rpc(&Request::Hello { version: VERSION })? {
            (Reply::Welcome { .. }, _) => Ok(r),
            (other, _) => Err(format!("{other:?}")),
        }
    }

    fn rpc(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), String> {
        // A refusal may arrive before our request got through: read it anyway.
        let sent = send_frame(self.sock.as_fd(), &proto::encode(req), &[]).map_err(|e| format!("send: {e}"));
        match recv_frame(self.sock.as_fd()) {
            Ok(None) | Err(_) if sent.is_err() => Err(sent.unwrap_err()),
            Ok(Some((_, body, fds))) => Ok((proto::decode_body::<Reply>(&body).map_err(|e| e.to_string())?, fds)),
            Ok(None) => Err("the router hung up".into()),
            Err(e) => Err(format!("recv: {e}")),
        }
    }
}

fn code_of(r: &Reply) -> String {
    match r {
        Reply::Error { code, message } => format!("{code:?} {message}"),
        other => format!("{other:?}"),
    }
}

/// Attaches clients until refused (each holds a router thread), then
/// allocates 4 KiB regions until refused (dropping our copies of the
/// descriptors: the router keeps its own); prints the counts and holds
/// everything until killed.
fn exhaust() {
    let mut clients = Vec::new();
    let why = loop {
        match Raw::attach() {
            Ok(c) => clients.push(c),
            Err(e) => break e,
        }
        if clients.len() > 100_000 {
            break "no limit".into();
        }
    };
    println!("CLIENTS {} {why}", clients.len());
    let mut regions = 0u64;
    let why = loop {
        match clients[0].rpc(&Request::AllocRegion { len: 4096 }) {
            Ok((Reply::Region { .. }, _fds)) => regions += 1,
            Ok((r, _)) => break code_of(&r),
            Err(e) => break e,
        }
    };
    println!("REGIONS {regions} {why}");
    println!("AT-LIMITS");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

/// Sends Hello, then 5 bytes of the next frame's header, and waits.
fn half_frame() {
    let r = Raw::attach().expect("attach");
    let frame = proto::encode(&Request::Stats);
    r.sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    (&r.sock).write_all(&frame[..5]).unwrap();
    println!("STALLED");
    std::io::stdout().flush().unwrap();
    let t = Instant::now();
    let mut b = [0u8; 256];
    // The router answers (an error) and hangs up, or just hangs up.
    loop {
        match (&r.sock).read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    println!("DROPPED ms={}", t.elapsed().as_millis());
}

/// Connects to a listener, then zeroes the connection's control page
/// (magic, ring size, both sides' words) and exits without a word.
fn corrupt_page(handle: &str) {
    let h = Handle::from_hex(handle).expect("handle");
    let r = Raw::attach().expect("attach");
    let (reply, mut fds) = r.rpc(&Request::Connect { router_id: h.router_id, listener: h.listener, nonce: h.nonce }).expect("connect");
    let Reply::Connected { ring_size, .. } = reply else { panic!("connect refused: {}", code_of(&reply)) };
    let fd = fds.pop().expect("the connection file");
    let len = ffcore::ring::file_len(ring_size as usize);
    // SAFETY: a fresh shared mapping of the file we were given.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
    assert!(p != libc::MAP_FAILED, "mmap");
    // Wait until the victim has accepted (its side's `attached` word, at
    // 128 + 12, is set), so that it is the running connection we break.
    let t = Instant::now();
    // SAFETY: offset 140 is inside the control page, 4-aligned.
    let attached = unsafe { &*((p as *const u8).add(140) as *const std::sync::atomic::AtomicU32) };
    while attached.load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the victim never accepted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the control page is the first 4 KiB of the mapping.
    unsafe { std::ptr::write_bytes(p as *mut u8, 0, 256) };
    println!("CORRUPTED");
    std::io::stdout().flush().unwrap();
    // Exit without closing anything: the kernel does it.
    std::process::exit(0);
}

/// Listens, prints the handle, accepts one connection and waits for a
/// message; prints how it ended.
fn victim() {
    let ctx = ffcore::Context::new().expect("attach");
    let l = ctx.listen().expect("listen");
    println!("HANDLE {}", l.handle().to_hex());
    std::io::stdout().flush().unwrap();
    let mut c = l.accept_timeout(Duration::from_secs(60)).expect("accept");
    println!("ACCEPTED");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 64];
    let r = c.recv(&mut buf, 0, Some(Duration::from_secs(60)));
    println!("RESULT {r:?}");
}

/// Connects to `handle`, with its router address replaced by `addr` if
/// given; prints the outcome and how long it took.
fn connect(handle: &str, addr: Option<&str>) {
    let mut h = Handle::from_hex(handle).expect("handle");
    if let Some(a) = addr {
        h.addr = Some(a.parse().expect("IP:PORT"));
    }
    let ctx = ffcore::Context::new().expect("attach");
    let t = Instant::now();
    let out = loop {
        match ctx.connect(&h) {
            Ok(Some(_)) => break "connected".to_string(),
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => break format!("{:?} {e}", e.code()),
        }
    };
    println!("RESULT ms={} {out}", t.elapsed().as_millis());
}

/// Copies one direction of a relayed stream; with `inject`, once `after`
/// bytes (the handshake) went through, writes a forged frame first.
fn pump(mut from: TcpStream, mut to: TcpStream, after: usize, inject: Option<Vec<u8>>) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    let mut inject = inject;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if to.write_all(&buf[..k]).is_err() {
            break;
        }
        n += k;
        if n >= after {
            if let Some(f) = inject.take() {
                let _ = to.write_all(&f);
                println!("INJECTED");
                std::io::stdout().flush().unwrap();
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    n
}

/// A forged CONNECT frame in clear: what a relay that became a "router"
/// would send to claim a connection for another tenant.
fn forged_connect(tenant: &str, listener: u64, nonce: u64) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Connect<'a> {
        tenant: &'a str,
        listener: u64,
        nonce: u64,
        credit: u64,
    }
    let body = postcard::to_allocvec(&Connect { tenant, listener, nonce, credit: 1 << 20 }).unwrap();
    let mut f = vec![0u8; 32];
    f[0] = 4; // CONNECT
    f[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&1u64.to_le_bytes());
    f.extend_from_slice(&body);
    f
}

/// Makes its own router dial it: listens on `port`, connects to `handle`
/// re-addressed to this container, and relays every link stream the
/// router opens to `target` (a router's `--listen-addr`). With `tamper`
/// (tenant:listener:nonce), injects a forged CONNECT into the first stream
/// once its handshake went through.
fn relay(port: &str, target: &str, handle: &str, tamper: Option<&str>) {
    let l = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    // Our own address as the router sees it (no packet is sent).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect(target).unwrap();
    let me = SocketAddr::new(probe.local_addr().unwrap().ip(), l.local_addr().unwrap().port());
    println!("RELAY {me}");
    let inject = tamper.map(|t| {
        let mut p = t.split(':');
        let (tenant, l, n) = (p.next().unwrap(), p.next().unwrap().parse().unwrap(), p.next().unwrap().parse().unwrap());
        forged_connect(tenant, l, n)
    });
    let target = target.to_string();
    std::thread::spawn(move || {
        let mut inject = inject;
        for s in l.incoming() {
            let Ok(dialer) = s else { continue };
            let Ok(far) = TcpStream::connect(&target) else {
                println!("TARGET-UNREACHABLE");
                continue;
            };
            println!("STREAM");
            std::io::stdout().flush().unwrap();
            let (d2, f2, inj) = (dialer.try_clone().unwrap(), far.try_clone().unwrap(), inject.take());
            // Dialer to acceptor: HELLO (72 bytes) and PROOF (40), then frames.
            std::thread::spawn(move || pump(dialer, far, 112, inj));
            std::thread::spawn(move || pump(f2, d2, usize::MAX, None));
        }
    });
    connect(handle, Some(&me.to_string()));
    std::io::stdout().flush().unwrap();
    // Let the relay run a little longer (the test watches the routers).
    std::thread::sleep(Duration::from_secs(2));
}

/// Opens `n` TCP connections to `target` from the local address `from`,
/// sends nothing, and holds them for `secs`.
fn stall(target: &str, from: &str, n: usize, secs: u64) {
    let target: SocketAddr = target.parse().expect("target");
    let from: std::net::IpAddr = from.parse().expect("from");
    let mut held = Vec::new();
    for _ in 0..n {
        // SAFETY: plain socket calls on a descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let std::net::IpAddr::V4(f) = from else { panic!("IPv4 only") };
        let std::net::IpAddr::V4(t) = target.ip() else { panic!("IPv4 only") };
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let (a, b) = (sin(f, 0), sin(t, target.port()));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        unsafe {
            assert_eq!(libc::bind(fd, &a as *const _ as *const libc::sockaddr, len), 0, "bind {from}");
            if libc::connect(fd, &b as *const _ as *const libc::sockaddr, len) == 0 {
                held.push(s);
            }
        }
    }
    println!("OPENED {}", held.len());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(secs));
}

/// A TCP service that is not a router: accepts and says nothing.
fn tcp_listen(addr: &str, secs: u64) {
    let l = TcpListener::bind(addr).expect("bind");
    println!("LISTENING");
    std::io::stdout().flush().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    std::thread::sleep(Duration::from_secs(secs));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    match a.as_slice() {
        ["exhaust"] => exhaust(),
        ["half-frame"] => half_frame(),
        ["corrupt-page", h] => corrupt_page(h),
        ["victim"] => victim(),
        ["connect", h] => connect(h, None),
        ["connect", h, addr] => connect(h, Some(addr)),
        ["relay", port, target, h] => relay(port, target, h, None),
        ["relay", port, target, h, tamper] => relay(port, target, h, Some(tamper)),
        ["stall", target, from, n, secs] => stall(target, from, n.parse().unwrap(), secs.parse().unwrap()),
        ["tcp-listen", addr, secs] => tcp_listen(addr, secs.parse().unwrap()),
        _ => {
            eprintln!("usage: see the top of testkit/src/bin/ffhostile.rs");
            std::process::exit(2);
        }
    }
}
