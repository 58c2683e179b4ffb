//! In-process checks of every exported ABI version: the tables, the
//! properties, a loopback connection (both ends in this process), the data
//! path's edge cases, bad input, the no-router failure, and a
//! dlopen/dlclose/dlopen cycle. Needs a router at FF_ROUTER_SOCKET.
//! Each check prints `CHECK <name> ok`; any failure panics.

use std::ffi::c_int;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::abi::*;
use crate::plugin::{self, Plugin, P, R, VERSIONS};

fn ok(name: &str) {
    println!("CHECK {name} ok");
}

fn code<T: std::fmt::Debug>(r: R<T>) -> c_int {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code,
    }
}

/// Retries `f` like NCCL's service thread; a hang becomes a failure.
fn retry<T>(what: &str, mut f: impl FnMut() -> R<Option<T>>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().unwrap_or_else(|e| panic!("{what}: {e}")) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what} never completed");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn wait(p: &Plugin, req: P) -> R<usize> {
    let start = Instant::now();
    loop {
        if let Some(n) = p.test(req)? {
            return Ok(n);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "request {req:?} never completed");
        std::thread::yield_now();
    }
}

/// A connected (send, recv) pair inside this process.
fn pair(p: &Plugin) -> (P, P) {
    let (handle, lc) = p.listen(0).unwrap();
    assert!(handle[64..].iter().all(|&b| b == 0), "unused handle bytes are zeroed");
    assert_eq!(p.accept(lc).unwrap(), None, "nothing to accept before connect");
    let s = retry("connect", || p.connect(0, &handle));
    let r = retry("accept", || p.accept(lc));
    p.close_listen(lc).unwrap();
    (s, r)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

pub fn run(lib: &Path) {
    no_router(lib);
    for v in VERSIONS {
        version(lib, v);
    }
    reload(lib);
    println!("RESULT selftest ok=1");
}

/// Without a router, `init` fails at once with one clear line: INFO
/// normally (NCCL falls back), WARN when NCCL_NET=FreeFlow asked for us.
fn no_router(lib: &Path) {
    let saved = std::env::var_os("FF_ROUTER_SOCKET");
    let saved_net = std::env::var_os("NCCL_NET");
    // Single-threaded here: nothing else reads the environment.
    std::env::set_var("FF_ROUTER_SOCKET", "/nonexistent-ff/ffrouter.sock");
    for v in [12, 8] {
        let mut p = Plugin::load(lib, v).unwrap();
        for (asked, level) in [(false, LOG_INFO), (true, LOG_WARN)] {
            if asked {
                std::env::set_var("NCCL_NET", "FreeFlow");
            } else {
                std::env::remove_var("NCCL_NET");
            }
            plugin::take_log();
            assert_eq!(code(p.init()), SYSTEM_ERROR);
            let log = plugin::take_log();
            assert_eq!(log.len(), 1, "one line: {log:?}");
            assert_eq!(log[0].0, level, "{log:?}");
            assert!(log[0].1.contains("no FreeFlow router at /nonexistent-ff/ffrouter.sock"), "{log:?}");
        }
        if v == 8 {
            // No context: every call fails cleanly, nothing hangs.
            assert_eq!(code(p.listen(0)), INTERNAL_ERROR);
        }
    }
    match saved {
        Some(s) => std::env::set_var("FF_ROUTER_SOCKET", s),
        None => std::env::remove_var("FF_ROUTER_SOCKET"),
    }
    match saved_net {
        Some(s) => std::env::set_var("NCCL_NET", s),
        None => std::env::remove_var("NCCL_NET"),
    }
    ok("no_router");
}

fn version(lib: &Path, v: u32) {
    let mut p = Plugin::load(lib, v).unwrap();
    assert_eq!(p.name(), "FreeFlow");
    // (regMrDmaBuf, iflush, finalize, getDeviceMr, irecvConsumed, makeVDevice, setNetAttr)
    assert_eq!(p.optional_entries(), [false, true, v >= 11, false, false, false, false], "v{v} table entries");
    p.init().unwrap();
    if v >= 11 {
        assert_ne!(p.ctx(), P::NULL, "v{v} init returns a context");
    }
    assert_eq!(p.devices().unwrap(), 1);
    let props = p.properties(0).unwrap();
    assert_eq!(props.name, "ffrouter");
    assert!(props.pci_path_null);
    assert_eq!((props.ptr_support, props.net_device_type, props.max_recvs), (PTR_HOST, DEVICE_HOST, 1));
    assert!(props.speed >= 1000 && props.latency > 0.0 && props.max_comms >= 1024, "{props:?}");
    if v >= 9 {
        for b in [props.max_p2p_bytes.unwrap(), props.max_coll_bytes.unwrap()] {
            assert!(b > 0 && b <= 1 << 40, "{props:?}");
        }
    }
    assert_eq!(code(p.properties(1)), INVALID_ARGUMENT);
    ok(&format!("v{v}_table_and_properties"));

    data_path(&p, v);
    bad_input(&p, v);

    p.finalize().unwrap();
    if v >= 11 {
        let ctx = p.ctx();
        assert_eq!(ctx, P::NULL);
        assert_eq!(code(p.finalize_ctx(P(std::ptr::without_provenance_mut(0x1234_0000_0001)))), INTERNAL_ERROR);
    }
    ok(&format!("v{v}_finalize"));
}

fn data_path(p: &Plugin, v: u32) {
    let (s, r) = pair(p);
    // Sends before receives, including zero bytes; receives bigger than the
    // messages, so `test` must report the size that arrived.
    let msgs: Vec<Vec<u8>> = [0usize, 1000, 1 << 20, 3].iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
    let smh: Vec<P> = msgs.iter().map(|m| p.reg_mr(s, m.as_ptr(), m.len(), PTR_HOST).unwrap()).collect();
    // SAFETY: `msgs` outlives the requests (waited for below).
    let sends: Vec<P> =
        msgs.iter().zip(&smh).map(|(m, &mh)| unsafe { p.isend(s, m.as_ptr(), m.len(), 7, mh) }.unwrap().unwrap()).collect();
    let mut bufs: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0u8; m.len() + 100]).collect();
    let rmh: Vec<P> = bufs.iter().map(|b| p.reg_mr(r, b.as_ptr(), b.len(), PTR_HOST).unwrap()).collect();
    // SAFETY: `bufs` outlives the requests.
    let recvs: Vec<P> = bufs
        .iter_mut()
        .zip(&rmh)
        .map(|(b, &mh)| unsafe { p.irecv(r, b.as_mut_ptr(), b.len(), 7, mh) }.unwrap().unwrap())
        .collect();
    for (i, req) in recvs.iter().enumerate() {
        assert_eq!(wait(p, *req).unwrap(), msgs[i].len(), "received size of message {i}");
        assert_eq!(&bufs[i][..msgs[i].len()], &msgs[i][..], "data of message {i}");
    }
    for (i, req) in sends.iter().enumerate() {
        assert_eq!(wait(p, *req).unwrap(), msgs[i].len(), "sent size of message {i}");
    }
    assert_eq!(code(p.test(sends[0])), INTERNAL_ERROR, "a completed request id is stale");
    // iflush: nothing to flush for host memory.
    assert_eq!(p.iflush(r, bufs[1].as_mut_ptr(), 1000, rmh[1]).unwrap(), None);
    for mh in smh {
        p.dereg_mr(s, mh).unwrap();
    }
    for mh in rmh {
        p.dereg_mr(r, mh).unwrap();
    }
    ok(&format!("v{v}_send_before_recv_sizes_and_zero_bytes"));

    // Zero bytes with NULL buffers and no memory handle.
    // SAFETY: zero-byte buffers.
    let (a, b) = unsafe {
        (p.isend(s, std::ptr::null(), 0, 7, P::NULL).unwrap().unwrap(), p.irecv(r, std::ptr::null_mut(), 0, 7, P::NULL).unwrap().unwrap())
    };
    assert_eq!((wait(p, b).unwrap(), wait(p, a).unwrap()), (0, 0));
    ok(&format!("v{v}_zero_bytes_null_buffer"));

    // At least 32 requests in flight; beyond that, a NULL request (retry).
    let mut rb = vec![[0u8; 8]; MAX_REQUESTS];
    // SAFETY: `rb` outlives the requests.
    let rreqs: Vec<P> = rb.iter_mut().map(|b| unsafe { p.irecv(r, b.as_mut_ptr(), 8, 7, P::NULL) }.unwrap().unwrap()).collect();
    let mut extra = [0u8; 8];
    // SAFETY: refused (NULL request), so the buffer is not kept.
    assert_eq!(unsafe { p.irecv(r, extra.as_mut_ptr(), 8, 7, P::NULL) }.unwrap(), None, "request 33 is refused with NULL");
    let sb: Vec<[u8; 8]> = (0..MAX_REQUESTS as u64).map(|i| (i * 3 + 1).to_le_bytes()).collect();
    // SAFETY: `sb` outlives the requests.
    let sreqs: Vec<P> = sb.iter().map(|b| unsafe { p.isend(s, b.as_ptr(), 8, 7, P::NULL) }.unwrap().unwrap()).collect();
    for (i, req) in rreqs.into_iter().enumerate() {
        assert_eq!(wait(p, req).unwrap(), 8);
        assert_eq!(rb[i], sb[i], "FIFO order, message {i}");
    }
    for req in sreqs {
        assert_eq!(wait(p, req).unwrap(), 8);
    }
    ok(&format!("v{v}_32_in_flight_fifo_then_null"));

    // A message larger than the receive fails that receive only.
    let big = pattern(100, 1);
    let small = pattern(10, 2);
    let mut rbuf = [0u8; 50];
    // SAFETY: buffers outlive the requests (waited for below).
    unsafe {
        let s1 = p.isend(s, big.as_ptr(), 100, 7, P::NULL).unwrap().unwrap();
        let s2 = p.isend(s, small.as_ptr(), 10, 7, P::NULL).unwrap().unwrap();
        let r1 = p.irecv(r, rbuf.as_mut_ptr(), 10, 7, P::NULL).unwrap().unwrap();
        plugin::take_log();
        assert_eq!(code(wait(p, r1)), INTERNAL_ERROR, "truncation is an error");
        assert!(plugin::take_log().iter().any(|(l, t)| *l == LOG_WARN && t.contains("test:") && t.contains("does not fit")));
        let r2 = p.irecv(r, rbuf.as_mut_ptr(), 50, 7, P::NULL).unwrap().unwrap();
        assert_eq!(wait(p, r2).unwrap(), 10);
        assert_eq!(&rbuf[..10], &small[..]);
        wait(p, s1).unwrap();
        wait(p, s2).unwrap();
    }
    ok(&format!("v{v}_truncation_is_an_error"));

    // Close with a receive in flight; then the peer's send fails, not hangs.
    let mut pending = [0u8; 16];
    // SAFETY: the comm is closed before `pending` goes away.
    let req = unsafe { p.irecv(r, pending.as_mut_ptr(), 16, 7, P::NULL) }.unwrap().unwrap();
    p.close_recv(r).unwrap();
    assert_eq!(code(p.test(req)), INTERNAL_ERROR, "requests die with their comm");
    let payload = vec![0u8; 8 << 20];
    // SAFETY: `payload` outlives the request (closed below).
    let sreq = unsafe { p.isend(s, payload.as_ptr(), payload.len(), 7, P::NULL) }.unwrap().unwrap();
    assert_eq!(code(wait(p, sreq)), REMOTE_ERROR, "peer closed");
    assert_eq!(code(p.close_recv(r)), INTERNAL_ERROR, "double close");
    p.close_send(s).unwrap();
    ok(&format!("v{v}_close_in_flight_and_peer_closed"));
}

fn bad_input(p: &Plugin, v: u32) {
    let (s, r) = pair(p);
    plugin::take_log();
    let bogus = [0, 1, 0xdead_beef, 0x7fff_1234_5678].map(|v| P(std::ptr::without_provenance_mut(v)));
    for b in bogus {
        assert_eq!(code(p.test(b)), INTERNAL_ERROR);
        assert_eq!(code(p.accept(b)), INTERNAL_ERROR);
        assert_eq!(code(p.close_send(b)), INTERNAL_ERROR);
        // SAFETY: refused before the buffer is used.
        assert_eq!(code(unsafe { p.isend(b, [0u8; 4].as_ptr(), 4, 0, P::NULL) }), INTERNAL_ERROR);
    }
    let warns = plugin::take_log();
    assert!(warns.iter().all(|(l, _)| *l == LOG_WARN) && warns.len() == 4 * bogus.len(), "one WARN per bad call: {warns:?}");
    assert!(warns.iter().any(|(_, t)| t.contains("test: 0xdeadbeef is not an outstanding request")), "{warns:?}");

    let mut buf = [0u8; 64];
    // SAFETY: all refused before the buffer is used.
    unsafe {
        assert_eq!(code(p.isend(r, buf.as_ptr(), 4, 0, P::NULL)), INTERNAL_ERROR, "isend on a receive comm");
        assert_eq!(code(p.irecv(s, buf.as_mut_ptr(), 4, 0, P::NULL)), INTERNAL_ERROR, "irecv on a send comm");
        assert_eq!(code(p.irecv_n(r, 2, buf.as_mut_ptr(), 4, 0, P::NULL)), INTERNAL_ERROR, "grouped receive");
        let mh = p.reg_mr(r, buf.as_ptr(), 16, PTR_HOST).unwrap();
        assert_eq!(code(p.irecv(r, buf.as_mut_ptr(), 64, 0, mh)), INTERNAL_ERROR, "outside the registered range");
        p.dereg_mr(r, mh).unwrap();
        assert_eq!(code(p.dereg_mr(r, mh)), INTERNAL_ERROR, "double deregister");
    }
    assert_eq!(code(p.reg_mr(s, buf.as_ptr(), 64, PTR_CUDA)), INTERNAL_ERROR, "CUDA memory");
    assert_eq!(code(p.listen(1)), INVALID_ARGUMENT, "no device 1");
    assert_eq!(code(p.connect(0, &[0u8; HANDLE_MAXSIZE])), INTERNAL_ERROR, "not a FreeFlow handle");
    let (stale, lc) = p.listen(0).unwrap();
    p.close_listen(lc).unwrap();
    assert_ne!(code(p.connect(0, &stale)), SUCCESS, "listener closed");
    assert_eq!(code(p.close_listen(lc)), INTERNAL_ERROR, "double closeListen");
    assert_eq!(code(p.close_recv(s)), INTERNAL_ERROR, "closeRecv on a send comm");
    p.close_send(s).unwrap();
    p.close_recv(r).unwrap();
    ok(&format!("v{v}_bad_input_is_an_error_code"));
}

/// dlopen, use, dlclose, dlopen again: state and logger survive.
fn reload(lib: &Path) {
    for round in 0..3 {
        let mut p = Plugin::load(lib, 12).unwrap();
        p.init().unwrap();
        let (s, r) = pair(&p);
        let msg = pattern(4096, round);
        let mut buf = vec![0u8; 4096];
        // SAFETY: buffers outlive the requests.
        unsafe {
            let a = p.isend(s, msg.as_ptr(), 4096, 1, P::NULL).unwrap().unwrap();
            let b = p.irecv(r, buf.as_mut_ptr(), 4096, 1, P::NULL).unwrap().unwrap();
            assert_eq!(wait(&p, b).unwrap(), 4096);
            wait(&p, a).unwrap();
        }
        assert_eq!(buf, msg);
        p.close_send(s).unwrap();
        p.close_recv(r).unwrap();
        p.finalize().unwrap();
        drop(p); // dlclose
    }
    ok("dlopen_dlclose_dlopen");
}
