//! A peer that breaks ffverbs' wire protocol: a process of the same tenant
//! (compromised, or another version) that connected to one of our queue
//! pairs speaks to it by hand over the ffcore connection. Whatever it
//! sends, our process must not crash, must not touch memory outside what
//! its registrations grant, and must answer as a NIC would (an error
//! completion or a failed queue pair, never a hang).
//!
//! The victim is this test process using the library in-process (the same
//! functions the C programs reach through `libibverbs.so.1`); the fake
//! peer is an ffcore client of the same router. Needs the router binary
//! (`cargo build`), nothing else.

use std::time::{Duration, Instant};

use ffcore::conn::Conn;
use ffcore::handle::Handle;
use ffverbs::abi::*;
use ffverbs::sys::*;
use ffverbs::wire::{self, Gid, Hdr, Hello};
use fftestkit::RouterProc;

const PAGE: usize = 4096;
const T: Duration = Duration::from_secs(10);
const CANARY: u8 = 0xAA;

/// One device context with a queue pair, and its memory: three pages, of
/// which only the middle one is registered (remote write, read and
/// atomics); the outer two are canaries that must never change.
struct Victim {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    cq: *mut ibv_cq,
    qp: *mut ibv_qp,
    mr: *mut ibv_mr,
    mem: Vec<u8>,
    at: usize,
}

impl Victim {
    unsafe fn open() -> Victim {
        let mut n = 0;
        let list = ffv_ibv_get_device_list(&mut n);
        assert!(!list.is_null() && n >= 1, "no ff0 device");
        let ctx = ffv_ibv_open_device(*list);
        assert!(!ctx.is_null(), "ibv_open_device");
        ffv_ibv_free_device_list(list);
        let pd = ffv_ibv_alloc_pd(ctx);
        assert!(!pd.is_null());
        let mut mem = vec![CANARY; 4 * PAGE];
        let at = (PAGE - mem.as_ptr() as usize % PAGE) % PAGE + PAGE;
        let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
        let mr = ffv_ibv_reg_mr(pd, mem.as_mut_ptr().add(at).cast(), PAGE, access as i32);
        assert!(!mr.is_null(), "ibv_reg_mr");
        let cq = ffv_ibv_create_cq(ctx, 64, std::ptr::null_mut(), std::ptr::null_mut(), 0);
        assert!(!cq.is_null());
        let mut ia = ibv_qp_init_attr { send_cq: cq, recv_cq: cq, qp_type: IBV_QPT_RC, ..Default::default() };
        ia.cap = ibv_qp_cap { max_send_wr: 16, max_recv_wr: 16, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 };
        let qp = ffv_ibv_create_qp(pd, &mut ia);
        assert!(!qp.is_null(), "ibv_create_qp");
        Victim { ctx, pd, cq, qp, mr, mem, at }
    }

    unsafe fn gid(&self) -> [u8; 16] {
        let mut g = ibv_gid::default();
        assert_eq!(ffv_ibv_query_gid(self.ctx, 1, 0, &mut g), 0);
        g.raw
    }

    unsafe fn qpn(&self) -> u32 {
        (*self.qp).qp_num
    }

    /// INIT, RTR towards (gid, qpn), RTS: as every verbs program does.
    unsafe fn connect(&self, gid: [u8; 16], qpn: u32) {
        let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
        let mut a = ibv_qp_attr { qp_state: IBV_QPS_INIT, port_num: 1, qp_access_flags: access, ..Default::default() };
        assert_eq!(ffv_ibv_modify_qp(self.qp, &mut a, (IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) as i32), 0, "INIT");
        let mut a = ibv_qp_attr { qp_state: IBV_QPS_RTR, path_mtu: IBV_MTU_4096, dest_qp_num: qpn, max_dest_rd_atomic: 1, min_rnr_timer: 12, ..Default::default() };
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid.raw = gid;
        a.ah_attr.grh.hop_limit = 1;
        a.ah_attr.port_num = 1;
        let mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
        assert_eq!(ffv_ibv_modify_qp(self.qp, &mut a, mask as i32), 0, "RTR");
        let mut a = ibv_qp_attr { qp_state: IBV_QPS_RTS, timeout: 14, retry_cnt: 7, rnr_retry: 7, max_rd_atomic: 1, ..Default::default() };
        let mask = IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
        assert_eq!(ffv_ibv_modify_qp(self.qp, &mut a, mask as i32), 0, "RTS");
    }

    fn region(&self) -> u64 {
        self.mem.as_ptr() as u64 + self.at as u64
    }

    unsafe fn post_recv(&self, wr_id: u64, off: usize, len: u32) {
        assert_eq!(self.try_post_recv(wr_id, off, len), 0, "ibv_post_recv");
    }

    unsafe fn try_post_recv(&self, wr_id: u64, off: usize, len: u32) -> i32 {
        let mut s = ibv_sge { addr: self.region() + off as u64, length: len, lkey: (*self.mr).lkey };
        let mut wr = ibv_recv_wr { wr_id, sg_list: &mut s, num_sge: 1, ..Default::default() };
        let mut bad = std::ptr::null_mut();
        let post = (*self.ctx).ops.post_recv.unwrap();
        post(self.qp, &mut wr, &mut bad)
    }

    unsafe fn post_rdma(&self, wr_id: u64, opcode: ibv_wr_opcode, off: u64, len: u32, rkey: u32, raddr: u64) -> i32 {
        let mut s = ibv_sge { addr: self.region() + off, length: len, lkey: (*self.mr).lkey };
        let mut wr = ibv_send_wr { wr_id, sg_list: &mut s, num_sge: 1, opcode, send_flags: IBV_SEND_SIGNALED, ..Default::default() };
        wr.wr.rdma.remote_addr = raddr;
        wr.wr.rdma.rkey = rkey;
        let mut bad = std::ptr::null_mut();
        let post = (*self.ctx).ops.post_send.unwrap();
        post(self.qp, &mut wr, &mut bad)
    }

    /// The next completion, within T.
    unsafe fn next_wc(&self, what: &str) -> ibv_wc {
        let poll = (*self.ctx).ops.poll_cq.unwrap();
        let t = Instant::now();
        loop {
            let mut wc = ibv_wc::default();
            let n = poll(self.cq, 1, &mut wc);
            assert!(n >= 0, "{what}: ibv_poll_cq failed ({n})");
            if n == 1 {
                return wc;
            }
            assert!(t.elapsed() < T, "{what}: no completion within {T:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One poll (progress for the device), ignoring what completes.
    unsafe fn next_wc_or_none(&self) {
        let poll = (*self.ctx).ops.poll_cq.unwrap();
        let mut wc = ibv_wc::default();
        poll(self.cq, 1, &mut wc);
        std::thread::sleep(Duration::from_millis(1));
    }

    unsafe fn state(&self) -> u32 {
        let mut a = ibv_qp_attr::default();
        let mut ia = ibv_qp_init_attr::default();
        assert_eq!(ffv_ibv_query_qp(self.qp, &mut a, IBV_QP_STATE as i32, &mut ia), 0);
        a.qp_state
    }

    fn canaries_intact(&self) -> bool {
        self.mem[..self.at].iter().chain(&self.mem[self.at + PAGE..]).all(|&b| b == CANARY)
    }

    fn registered(&self) -> &[u8] {
        &self.mem[self.at..self.at + PAGE]
    }

    unsafe fn close(self) {
        assert_eq!(ffv_ibv_destroy_qp(self.qp), 0);
        assert_eq!(ffv_ibv_destroy_cq(self.cq), 0);
        assert_eq!(ffv_ibv_dereg_mr(self.mr), 0);
        assert_eq!(ffv_ibv_dealloc_pd(self.pd), 0);
        assert_eq!(ffv_ibv_close_device(self.ctx), 0);
    }
}

/// The hand-written peer: its own listener (its GID) and an ffcore
/// connection to the victim's queue pair once both are at RTR.
struct Fake {
    ctx: ffcore::Context,
    listener: ffcore::Listener,
    gid: [u8; 16],
    qpn: u32,
    seq: u64,
}

impl Fake {
    fn new(victim_gid: [u8; 16]) -> Fake {
        let ctx = ffcore::Context::new().expect("fake peer: attach to the router");
        let listener = ctx.listen().unwrap();
        let h = listener.handle();
        let ip = Gid::from_bytes(&victim_gid).ip;
        let gid = Gid { ip, listener: h.listener as u32, nonce: h.nonce }.to_bytes();
        Fake { ctx, listener, gid, qpn: 0x77_0000, seq: 0 }
    }

    /// Connects to the victim's queue pair (or takes its connection: the
    /// side with the lower GID and queue pair number connects).
    fn link(&self, v: &Victim) -> Conn {
        let (vgid, vqpn) = unsafe { (v.gid(), v.qpn()) };
        if (vgid, vqpn) < (self.gid, self.qpn) {
            // The victim connects and greets; its device makes progress in
            // its own thread.
            let mut c = self.listener.accept_timeout(T).expect("the victim's queue pair never connected");
            let (tag, body) = take(&mut c, "HELLO");
            assert_eq!(tag, wire::HELLO);
            let h = Hello::read(&body).unwrap();
            assert_eq!((h.src_qpn, h.dst_qpn), (vqpn, self.qpn));
            return c;
        }
        let g = Gid::from_bytes(&vgid);
        let handle = Handle { router_id: self.listener.handle().router_id, listener: g.listener as u64, nonce: g.nonce, addr: None };
        let t = Instant::now();
        let mut c = loop {
            if let Some(c) = self.ctx.connect(&handle).unwrap() {
                break c;
            }
            assert!(t.elapsed() < T, "cannot connect to the victim's device");
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut b = [0u8; Hello::LEN];
        Hello { src_qpn: self.qpn, dst_qpn: vqpn }.write(&mut b);
        put(&mut c, wire::HELLO, &b);
        c
    }

    /// A request header (the next sequence number) and inline bytes.
    fn request(&mut self, c: &mut Conn, tag: u32, mut h: Hdr, inline: &[u8]) {
        h.seq = self.seq;
        self.seq += 1;
        let mut b = vec![0u8; Hdr::LEN + inline.len()];
        h.write(&mut b);
        b[Hdr::LEN..].copy_from_slice(inline);
        put(c, tag, &b);
    }
}

/// Sends one whole message, as the library's own requester does, if the
/// ring has room for it now.
fn try_put(c: &mut Conn, tag: u32, b: &[u8]) -> bool {
    let r = c.try_send_with(tag, b.len(), |p| {
        // SAFETY: try_send_with hands us b.len() writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
        b.len()
    });
    r.expect("fake peer: send").is_some()
}

/// [`try_put`], waiting up to T for room.
fn put(c: &mut Conn, tag: u32, b: &[u8]) {
    let t = Instant::now();
    while !try_put(c, tag, b) {
        assert!(t.elapsed() < T, "fake peer: no room to send");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The next whole message from the victim.
fn take(c: &mut Conn, what: &str) -> (u32, Vec<u8>) {
    let t = Instant::now();
    loop {
        let mut got = None;
        // SAFETY: len bytes at p, copied out at once.
        let r = c.poll_whole(|tag, p, len| got = Some((tag, unsafe { std::slice::from_raw_parts(p, len) }.to_vec())));
        if let Some(g) = got {
            return g;
        }
        if let Err(e) = r {
            panic!("fake peer, waiting for {what}: {e}");
        }
        assert!(t.elapsed() < T, "fake peer: no {what} within {T:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The next ACK (or READ answer) from the victim: its header.
fn answer(c: &mut Conn, what: &str) -> (u32, Hdr) {
    loop {
        let (tag, b) = take(c, what);
        if tag == wire::RKEY {
            continue;
        }
        return (tag, Hdr::read(&b).unwrap_or_else(|| panic!("{what}: a {}-byte answer", b.len())));
    }
}

fn setup() -> RouterProc {
    let r = RouterProc::start(&["t"], &[]);
    // One test function in this binary: nothing reads the environment
    // while it changes.
    std::env::set_var("FF_ROUTER_SOCKET", r.socket("t"));
    r
}

/// A queue pair ready for the fake: (victim, fake, the fake's connection).
fn pair() -> (Victim, Fake, Conn) {
    let v = unsafe { Victim::open() };
    let fake = Fake::new(unsafe { v.gid() });
    unsafe { v.connect(fake.gid, fake.qpn) };
    let c = fake.link(&v);
    (v, fake, c)
}

#[test]
fn a_peer_breaking_the_wire_protocol_gets_errors_and_never_crashes_us_nor_reaches_outside_a_registration() {
    let _router = setup();
    let ok = |v: &Victim| assert!(v.canaries_intact(), "memory outside the registration changed");

    // 1. A SEND that says 2^40 bytes follow, into a 64-byte receive: the
    // receive fails (length), the peer hears "invalid request", and the
    // bytes it does send are dropped without a buffer of that size (the
    // library allocated the claimed length and aborted the process). The
    // connection goes on: the next SEND lands.
    let (v, mut fake, mut c) = pair();
    unsafe { v.post_recv(1, 0, 64) };
    fake.request(&mut c, wire::SEND, Hdr { len: 1 << 40, flags: wire::F_DATA_NEXT, ..Default::default() }, &[]);
    c.send(&[7u8; 100], wire::DATA, Some(T)).unwrap();
    let wc = unsafe { v.next_wc("the oversized SEND's receive") };
    assert_eq!((wc.wr_id, wc.status), (1, IBV_WC_LOC_LEN_ERR));
    let (tag, h) = answer(&mut c, "the ACK of the oversized SEND");
    assert_eq!((tag, h.seq, h.status), (wire::ACK, 0, IBV_WC_REM_INV_REQ_ERR));
    unsafe { v.post_recv(2, 0, 64) };
    fake.request(&mut c, wire::SEND, Hdr { len: 5, ..Default::default() }, b"hello");
    let wc = unsafe { v.next_wc("the SEND after it") };
    assert_eq!((wc.wr_id, wc.status, wc.byte_len), (2, IBV_WC_SUCCESS, 5));
    assert_eq!(&v.registered()[..5], b"hello");
    ok(&v);
    drop(c);
    unsafe { v.close() };

    // 2. WRITEs outside the registration: below it, across its end, with
    // an address + length that wraps, and under a key nobody registered
    // (with 2^40 bytes said to follow). Each is refused with a remote
    // access error; the canaries stay; a WRITE inside still lands.
    let (v, mut fake, mut c) = pair();
    let (base, rkey) = (v.region(), unsafe { (*v.mr).rkey });
    // (header, bytes inline or in a DATA message after it)
    let bad = [
        (Hdr { raddr: base - 8, len: 16, rkey, ..Default::default() }, true),
        (Hdr { raddr: base + PAGE as u64 - 8, len: 16, rkey, ..Default::default() }, true),
        (Hdr { raddr: base + 8, len: u64::MAX - 4, rkey, flags: wire::F_DATA_NEXT, ..Default::default() }, false),
    ];
    for (i, (h, inline)) in bad.into_iter().enumerate() {
        if inline {
            fake.request(&mut c, wire::WRITE, h, &[0x55u8; 16]);
        } else {
            fake.request(&mut c, wire::WRITE, h, &[]);
            c.send(&[0x55u8; 16], wire::DATA, Some(T)).unwrap();
        }
        let (tag, a) = answer(&mut c, "a bad WRITE's ACK");
        assert_eq!((tag, a.seq, a.status), (wire::ACK, i as u64, IBV_WC_REM_ACCESS_ERR), "bad WRITE {i}");
        ok(&v);
    }
    fake.request(&mut c, wire::WRITE, Hdr { raddr: base, len: 1 << 40, rkey: rkey ^ 0x5a5a, flags: wire::F_DATA_NEXT, ..Default::default() }, &[]);
    c.send(&[0x55u8; 100], wire::DATA, Some(T)).unwrap();
    let (tag, a) = answer(&mut c, "the unknown key's ACK");
    assert_eq!((tag, a.status), (wire::ACK, IBV_WC_REM_ACCESS_ERR));
    fake.request(&mut c, wire::WRITE, Hdr { raddr: base + 100, len: 4, rkey, ..Default::default() }, b"good");
    let (tag, a) = answer(&mut c, "the good WRITE's ACK");
    assert_eq!((tag, a.status), (wire::ACK, 0));
    assert_eq!(&v.registered()[100..104], b"good");
    assert!(v.registered().iter().take(100).all(|&b| b == CANARY), "a refused WRITE wrote");
    ok(&v);
    // READs outside, and an atomic that is not aligned: refused too.
    fake.request(&mut c, wire::READ, Hdr { raddr: base + PAGE as u64 - 4, len: 8, rkey, ..Default::default() }, &[]);
    let (tag, a) = answer(&mut c, "a bad READ's answer");
    assert_eq!((tag, a.status), (wire::READ_RESP, IBV_WC_REM_ACCESS_ERR));
    fake.request(&mut c, wire::ATOMIC, Hdr { raddr: base + 4, len: 8, rkey, ..Default::default() }, &[1u8; 16]);
    let (tag, a) = answer(&mut c, "an unaligned atomic's answer");
    assert_eq!((tag, a.status), (wire::READ_RESP, IBV_WC_REM_INV_REQ_ERR));
    ok(&v);
    drop(c);
    unsafe { v.close() };

    // 3. An atomic that says data follows, queued behind a SEND that waits
    // for its receive, with 4 bytes where its 16 operand bytes would be:
    // the library used to serve it once the receive came and panic on the
    // short operands. The queue pair fails now, at the atomic; the process
    // lives and the SEND's receive is flushed.
    let (v, mut fake, mut c) = pair();
    let (base, rkey) = (v.region(), unsafe { (*v.mr).rkey });
    fake.request(&mut c, wire::SEND, Hdr { len: 2, ..Default::default() }, b"hi");
    fake.request(&mut c, wire::ATOMIC, Hdr { raddr: base, len: 4, rkey, flags: wire::F_DATA_NEXT, ..Default::default() }, &[0u8; 16]);
    // The queue pair fails at the atomic's header, so the library may have
    // closed the connection before these bytes go (a busy machine: 1 run
    // of 3 of the whole suite beside two busy loops).
    match c.send(&[1u8; 4], wire::DATA, Some(T)) {
        Ok(_) | Err(ffcore::Error::PeerClosed) => {}
        Err(e) => panic!("sending the atomic's short operands: {e}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    // Posting may already be refused (the queue pair failed); either way
    // the queue pair must end in the error state, the process alive.
    unsafe { v.try_post_recv(3, 0, 64) };
    let t = Instant::now();
    while unsafe { v.state() } != IBV_QPS_ERR {
        assert!(t.elapsed() < T, "the queue pair did not fail on the bad atomic");
        unsafe { v.next_wc_or_none() };
    }
    ok(&v);
    drop(c);
    unsafe { v.close() };

    // 4. SENDs of no bytes while no receive is posted: a NIC answers
    // "receiver not ready"; we hold them, but only up to a bound (each
    // counts as 128 bytes of the 64 MiB held requests may take), after
    // which we stop reading and the peer's ring fills (no send for 2 s:
    // long enough that a busy machine's scheduler does not look like it).
    // Then a receive takes the first of them.
    let (v, mut fake, mut c) = pair();
    let (t, mut sent, mut stalled) = (Instant::now(), 0u64, None::<Instant>);
    let mut b = [0u8; Hdr::LEN];
    loop {
        Hdr { seq: fake.seq, ..Default::default() }.write(&mut b);
        if try_put(&mut c, wire::SEND, &b) {
            fake.seq += 1;
            sent += 1;
            stalled = None;
        } else if stalled.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2) {
            break;
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(sent < 2_000_000, "{sent} SENDs held without a receive: no bound");
        assert!(t.elapsed() < Duration::from_secs(120), "{sent} SENDs in 120 s");
    }
    assert!(sent > 100_000, "only {sent} SENDs before the victim stopped reading");
    unsafe { v.post_recv(5, 0, 64) };
    let wc = unsafe { v.next_wc("a held SEND") };
    assert_eq!((wc.wr_id, wc.status, wc.byte_len), (5, IBV_WC_SUCCESS, 0));
    drop(c);
    unsafe { v.close() };

    // 5. As requester: the peer announces a key of its own shadow memory
    // whose range wraps past the end of the address space, then we WRITE
    // near that end under it. The library must not take the WRITE as
    // inside the range (its check overflowed); it sends it as a message,
    // which the peer answers.
    let (v, fake, mut c) = pair();
    let region = fake.ctx.alloc_region(PAGE).unwrap();
    let mut kb = [0u8; ffcore::mr::RemoteKey::LEN];
    region.remote_key().write(&mut kb);
    let forged = Hdr { raddr: u64::MAX - 10, len: 100, rkey: 0x4242, flags: IBV_ACCESS_REMOTE_WRITE, ..Default::default() };
    let mut b = vec![0u8; Hdr::LEN + kb.len()];
    forged.write(&mut b);
    b[Hdr::LEN..].copy_from_slice(&kb);
    put(&mut c, wire::RKEY, &b);
    std::thread::sleep(Duration::from_millis(50));
    // Let the device take the RKEY in.
    unsafe { v.next_wc_or_none() };
    assert_eq!(unsafe { v.post_rdma(9, IBV_WR_RDMA_WRITE, 0, 8, 0x4242, u64::MAX - 8) }, 0, "ibv_post_send");
    let (tag, b) = take(&mut c, "our WRITE");
    assert_eq!(tag, wire::WRITE, "the WRITE went as a message");
    let h = Hdr::read(&b).unwrap();
    assert_eq!((h.raddr, h.len, h.rkey), (u64::MAX - 8, 8, 0x4242));
    let mut ack = [0u8; Hdr::LEN];
    Hdr { seq: h.seq, status: IBV_WC_REM_ACCESS_ERR, ..Default::default() }.write(&mut ack);
    put(&mut c, wire::ACK, &ack);
    let wc = unsafe { v.next_wc("our WRITE") };
    assert_eq!((wc.wr_id, wc.status), (9, IBV_WC_REM_ACCESS_ERR));
    ok(&v);
    drop(c);
    unsafe { v.close() };

    // 6. As requester: our READ of 64 bytes answered with 10 (the header
    // says 64, the DATA after it has 10). It must not complete as done
    // with the rest of the buffer as it was.
    let (v, _fake, mut c) = pair();
    assert_eq!(unsafe { v.post_rdma(11, IBV_WR_RDMA_READ, 200, 64, 0x99, 0x1000) }, 0, "ibv_post_send");
    let (tag, b) = take(&mut c, "our READ");
    assert_eq!(tag, wire::READ);
    let h = Hdr::read(&b).unwrap();
    assert_eq!(h.len, 64);
    let mut resp = [0u8; Hdr::LEN];
    Hdr { seq: h.seq, len: 64, flags: wire::F_DATA_NEXT, ..Default::default() }.write(&mut resp);
    put(&mut c, wire::READ_RESP, &resp);
    c.send(&[0x33u8; 10], wire::DATA, Some(T)).unwrap();
    let wc = unsafe { v.next_wc("our short-answered READ") };
    assert_eq!(wc.wr_id, 11);
    assert_ne!(wc.status, IBV_WC_SUCCESS, "a READ answered with 10 of its 64 bytes completed as done");
    ok(&v);
    drop(c);
    unsafe { v.close() };
}
