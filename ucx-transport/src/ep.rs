//! Endpoints: one ffcore connection each, opened with `Context::connect` to
//! the peer iface's handle (completes at once on one host; the peer picks
//! it up in its progress).
//!
//! Initiator side of [`crate::proto`]:
//! - `am_short` / `am_bcopy` write the message straight into the shared
//!   ring (bcopy: UCP's pack callback writes there itself), one copy;
//! - `put_zcopy` sends a request with the data inline (small) or followed
//!   by a streamed data message (large); the target writes it into the
//!   registered range and acks; completion on the ack;
//! - `get_zcopy` sends a request; the target replies with the data (inline
//!   or streamed), received straight into the local buffer; completion when
//!   it has arrived;
//! - PUT/GET short and bcopy (up to the inline size) and the atomics: done
//!   at once through the peer's shadow pages when they are mapped here (one
//!   host), else a request the target serves (atomics: [`proto::AmoReq`],
//!   performed by the target as one CPU atomic, answered with the old
//!   value); `ep_fence` keeps later direct operations behind older requests.
//!
//! Copies: AM and inline RMA data are copied into the ring by the sender and
//! out of it by the receiver (AMs into the receiving iface's private buffer,
//! from which UCP copies them to the user buffer; from another host UCP
//! copies them straight out of the ring); streamed RMA data likewise
//! moves user buffer -> ring -> user buffer, pipelined in ring fragments by
//! both cores: two copies, where CMA's process_vm_readv makes one (and
//! needs ptrace rights across containers, which FreeFlow does not grant).
//!
//! UCT rules UCX itself enforces (and its gtest checks): sends return
//! NO_RESOURCE while requests wait in the pending queue (except from the
//! dispatch of that queue), a failing bcopy never calls the pack callback,
//! AM ids are checked on both sides.
//!
//! # Safety
//!
//! The `unsafe` functions here are UCT callbacks (in the ops tables this
//! crate hands UCX) and the helpers they call. Their contract is UCT's, not
//! restated per function: every handle (`uct_iface_h`, `uct_ep_h`,
//! `uct_md_h`, `uct_rkey_t`) is one this crate created and has not yet
//! destroyed; every other pointer is valid for what UCT's API says the call
//! reads or writes, for the duration of the call (a zero-copy buffer and a
//! completion until the operation completes); and UCX serializes the calls
//! on one worker, so no two run at once on the same iface or domain.

#![allow(clippy::missing_safety_doc)] // see "Safety" above

use crate::iface::{self, Iface};
use crate::internal::*;
use crate::md::Rkey;
use crate::proto::{self, AmoReply, AmoReq, GetWay, PackedRkey, RmaReply, RmaReq};
use crate::sys::*;
use ffcore::{AtomicOp, Conn, Req, Width};
use std::collections::VecDeque;
use std::os::raw::{c_uint, c_void};
use std::time::Instant;

#[repr(C)]
pub struct Ep {
    /// Must come first: `uct_ep_t { iface }`.
    pub super_: uct_ep_t,
    pub iface: *mut Iface,
    pub conn: Conn,
    pending: VecDeque<*mut uct_pending_req_t>,
    dispatching: bool,
    /// PUTs, GETs and atomics waiting for their reply, in issue order.
    ops: VecDeque<Op>,
    next_seq: u64,
    /// The first op issued after the last fence: operations that go
    /// straight to a peer's mapped memory wait (take the message path,
    /// served in order) while older ops are outstanding.
    fence_at: u64,
    /// PUT data sends still in the ring.
    sends: VecDeque<Req>,
    /// Outstanding ops that move bulk data ([`iface::BULK_MIN`]).
    bulk_ops: usize,
    /// Outstanding [`GetWay::Posted`] GETs (each has its receive posted).
    posted: usize,
    /// The request of the newest posted GET, not sent yet for want of room
    /// (its receive is posted): it goes before anything else is sent.
    unsent: Option<RmaReq>,
    /// The GET_GO (its request's sequence number) that releases the data
    /// of a held GET, not sent yet for want of room.
    go: Option<u64>,
    /// Since when the data of the held or posted GET at the front has been
    /// awaited.
    held_wait: Option<Stall>,
    /// Flush completions: each waits for the ops issued before it.
    flushes: VecDeque<(u64, *mut uct_completion_t)>,
    /// Why the endpoint stopped working (sends then fail with this status).
    broken: Option<ucs_status_t>,
    /// The failure went to the iface's error handler (once per endpoint).
    err_reported: bool,
    /// The connection's wake-up words, for the iface's event descriptor.
    pub words: Option<std::sync::Arc<ffcore::wake::ConnWords>>,
    pub destroyed: bool,
}

#[derive(Clone, Copy)]
struct Op {
    seq: u64,
    comp: *mut uct_completion_t,
    kind: OpKind,
    /// Streams at least [`iface::BULK_MIN`] bytes (counted in `bulk_ops`).
    bulk: bool,
}

/// What an outstanding op waits for, and where its answer goes.
#[derive(Clone, Copy)]
enum OpKind {
    /// A PUT's ack.
    Put,
    /// GET data, into `buf`, coming back `way`; `rx`: the receive for it
    /// (posted with the request for a [`GetWay::Posted`] GET, else once
    /// the reply came).
    Get { buf: *mut u8, len: usize, way: GetWay, rx: Option<Req> },
    /// GET data (inline), handed to UCP's unpack callback (`get_bcopy`).
    GetUnpack { cb: unsafe extern "C" fn(*mut c_void, *const c_void, usize), arg: *mut c_void, len: usize },
    /// An atomic's answer: the old value goes to `result` (null: posted).
    Amo { result: *mut u8, width: Width },
}

impl Ep {
    pub fn has_outstanding(&self) -> bool {
        !self.ops.is_empty() || !self.sends.is_empty()
    }
    /// Is a bulk PUT or GET under way (see [`iface::BULK_MIN`])?
    pub fn bulk(&self) -> bool {
        self.bulk_ops > 0
    }
    pub fn needs_progress(&self) -> bool {
        !self.pending.is_empty() || !self.ops.is_empty() || !self.sends.is_empty() || !self.flushes.is_empty()
    }

    /// Is the peer gone (or the endpoint broken) without the error handler
    /// having heard of it? A closed peer with requests outstanding is
    /// failed by progress once their replies, if any came, are taken.
    pub fn failed_unreported(&self) -> bool {
        !self.err_reported && (self.broken.is_some() || self.ops.is_empty() && self.conn.peer_closed())
    }

    /// Whether the endpoint's progress would find work now (for arming the
    /// iface's event descriptor): replies or room for queued data, room
    /// for the pending queue (two of the largest messages, or a ring
    /// drained of everything), a failure to report.
    pub fn has_events(&mut self) -> bool {
        if self.err_reported {
            return false;
        }
        if self.broken.is_some() || self.conn.peer_closed() {
            return true;
        }
        if (!self.ops.is_empty() || !self.sends.is_empty()) && self.conn.has_events() {
            return true;
        }
        if self.go.is_some() && self.conn.tx_free() >= GO_ROOM {
            return true;
        }
        if self.unsent.is_some() && self.conn.tx_free() >= REQ_ROOM {
            return true;
        }
        if !self.pending.is_empty() {
            // SAFETY: the iface outlives its endpoints.
            let seg = unsafe { (*self.iface).st.cfg.seg_size };
            return self.conn.tx_free() >= 2 * (seg + 128) || self.conn.has_events();
        }
        false
    }
}

/// Reports a failed endpoint once: its outstanding operations complete
/// with the error, then the iface's error handler (UCP's) hears of it from
/// this progress call (UCP then fails its endpoint, purges the pending
/// queue and destroys this one, maybe right away). A closed or dead peer
/// is `UCS_ERR_ENDPOINT_TIMEOUT`, as UCX's own tcp transport reports one
/// (UCP's failed endpoint answers later sends with that status, and UCX's
/// peer-failure tests expect the two to match).
pub unsafe fn report_failure(ep: *mut Ep) {
    if (*ep).err_reported {
        return;
    }
    let status = *(*ep).broken.get_or_insert(UCS_ERR_ENDPOINT_TIMEOUT);
    (*ep).err_reported = true;
    ff_diag!("ff: endpoint {:p} (connection {}): peer failure ({}), reported to the error handler", ep, (*ep).conn.id(), status);
    fail_all(ep, status);
    if (*ep).destroyed {
        return;
    }
    let iface = (*ep).iface as uct_iface_h;
    let s = uct_iface_handle_ep_err(iface, ep as uct_ep_h, status);
    if s != UCS_OK {
        ff_debug!("ff: the error handler did not take the failure of endpoint {:p}: status {s}", ep);
    }
}

/// `uct_ep_check`: checks now that the peer is alive (its liveness lock);
/// a dead peer is reported to the error handler by the next progress. The
/// router tells us of a peer's death on its own; this covers a router
/// that is down.
unsafe extern "C" fn ep_check(ep_h: uct_ep_h, flags: c_uint, comp: *mut uct_completion_t) -> ucs_status_t {
    if flags != 0 || !comp.is_null() {
        return UCS_ERR_INVALID_PARAM; // both reserved in UCX 1.13
    }
    let ep = ep_h as *mut Ep;
    if !(*ep).conn.check_alive() {
        ff_debug!("ff: endpoint {:p}: the peer is gone", ep);
    }
    UCS_OK
}

unsafe fn unsupported<T>() -> T {
    let f: unsafe extern "C" fn() -> ucs_status_t = ucs_empty_function_return_unsupported;
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of_val(&f));
    std::mem::transmute_copy(&Some(f))
}

unsafe extern "C" fn tag_eager_bcopy_unsupported(_ep: uct_ep_h, _tag: uct_tag_t, _imm: u64, _cb: uct_pack_callback_t, _arg: *mut c_void, _flags: c_uint) -> isize {
    UCS_ERR_UNSUPPORTED as isize
}

unsafe extern "C" fn tag_rndv_zcopy_unsupported(
    _ep: uct_ep_h,
    _tag: uct_tag_t,
    _h: *const c_void,
    _hl: c_uint,
    _iov: *const uct_iov_t,
    _n: usize,
    _flags: c_uint,
    _comp: *mut uct_completion_t,
) -> ucs_status_ptr_t {
    UCS_ERR_UNSUPPORTED as isize as ucs_status_ptr_t
}

unsafe extern "C" fn progress_enable(iface: uct_iface_h, flags: c_uint) {
    uct_base_iface_progress_enable(iface, flags)
}

unsafe extern "C" fn progress_disable(iface: uct_iface_h, flags: c_uint) {
    uct_base_iface_progress_disable(iface, flags)
}

/// The iface operations table (copied into the iface by libuct).
pub fn ops() -> uct_iface_ops_t {
    // SAFETY: every unsupported slot returns ucs_status_t like the stub.
    unsafe {
        uct_iface_ops_t {
            ep_put_short: Some(put_short),
            ep_put_bcopy: Some(put_bcopy),
            ep_put_zcopy: Some(put_zcopy),
            ep_get_short: Some(get_short),
            ep_get_bcopy: Some(get_bcopy),
            ep_get_zcopy: Some(get_zcopy),
            ep_am_short: Some(am_short),
            ep_am_short_iov: Some(am_short_iov),
            ep_am_bcopy: Some(am_bcopy),
            ep_am_zcopy: unsupported(),
            ep_atomic_cswap64: Some(atomic_cswap64),
            ep_atomic_cswap32: Some(atomic_cswap32),
            ep_atomic32_post: Some(atomic32_post),
            ep_atomic64_post: Some(atomic64_post),
            ep_atomic32_fetch: Some(atomic32_fetch),
            ep_atomic64_fetch: Some(atomic64_fetch),
            ep_tag_eager_short: unsupported(),
            ep_tag_eager_bcopy: Some(tag_eager_bcopy_unsupported),
            ep_tag_eager_zcopy: unsupported(),
            ep_tag_rndv_zcopy: Some(tag_rndv_zcopy_unsupported),
            ep_tag_rndv_cancel: unsupported(),
            ep_tag_rndv_request: unsupported(),
            iface_tag_recv_zcopy: unsupported(),
            iface_tag_recv_cancel: unsupported(),
            ep_pending_add: Some(pending_add),
            ep_pending_purge: Some(pending_purge),
            ep_flush: Some(ep_flush),
            ep_fence: Some(ep_fence),
            ep_check: Some(ep_check),
            ep_create: Some(ep_create),
            ep_connect: unsupported(),
            ep_disconnect: unsupported(),
            cm_ep_conn_notify: unsupported(),
            ep_destroy: Some(ep_destroy),
            ep_get_address: unsupported(),
            ep_connect_to_ep: unsupported(),
            iface_accept: unsupported(),
            iface_reject: unsupported(),
            iface_flush: Some(iface::iface_flush),
            iface_fence: Some(iface::iface_fence),
            iface_progress_enable: Some(progress_enable),
            iface_progress_disable: Some(progress_disable),
            iface_progress: Some(iface::iface_progress),
            iface_event_fd_get: Some(iface::event_fd_get),
            iface_event_arm: Some(iface::event_arm),
            iface_close: Some(iface::iface_close),
            iface_query: Some(iface::iface_query),
            iface_get_device_address: Some(iface::get_device_address),
            iface_get_address: Some(iface::get_address),
            iface_is_reachable: Some(iface::is_reachable),
        }
    }
}

fn status_of(e: &ffcore::Error) -> ucs_status_t {
    match e {
        // As UCX's tcp reports a dead peer (see report_failure).
        ffcore::Error::PeerClosed => UCS_ERR_ENDPOINT_TIMEOUT,
        ffcore::Error::InvalidArgument(_) => UCS_ERR_INVALID_PARAM,
        ffcore::Error::QueueFull(_) => UCS_ERR_NO_RESOURCE,
        _ => UCS_ERR_IO_ERROR,
    }
}

unsafe fn break_ep(ep: *mut Ep, e: &ffcore::Error) -> ucs_status_t {
    let s = status_of(e);
    if s == UCS_ERR_NO_RESOURCE || s == UCS_ERR_INVALID_PARAM {
        return s;
    }
    if (*ep).broken.is_none() {
        ff_diag!("ff: endpoint {:p} (connection {}) failed: {e}", ep, (*ep).conn.id());
        (*ep).broken = Some(s);
    }
    s
}

/// Common gate of every send: broken endpoint, a posted GET's request not
/// sent yet, or requests already waiting in the pending queue (only their
/// dispatch may send then).
#[inline]
unsafe fn gate(ep: *mut Ep) -> Option<ucs_status_t> {
    if let Some(s) = (*ep).broken {
        return Some(s);
    }
    match send_unsent(ep) {
        Ok(true) => {}
        Ok(false) => return Some(UCS_ERR_NO_RESOURCE),
        Err(s) => return Some(s),
    }
    if !(*ep).pending.is_empty() && !(*ep).dispatching {
        return Some(UCS_ERR_NO_RESOURCE);
    }
    None
}

pub unsafe extern "C" fn ep_create(params: *const uct_ep_params_t, ep_p: *mut uct_ep_h) -> ucs_status_t {
    let p = &*params;
    let need = (UCT_EP_PARAM_FIELD_IFACE | UCT_EP_PARAM_FIELD_DEV_ADDR | UCT_EP_PARAM_FIELD_IFACE_ADDR) as u64;
    if p.field_mask & need != need || p.iface.is_null() || p.iface_addr.is_null() || p.dev_addr.is_null() {
        return UCS_ERR_UNSUPPORTED; // connect-to-iface only
    }
    let me = p.iface as *mut Iface;
    let st = &(*me).st;
    let dev = std::slice::from_raw_parts(p.dev_addr as *const u8, iface::DEV_ADDR_LEN);
    let ia = std::slice::from_raw_parts(p.iface_addr as *const u8, iface::IFACE_ADDR_LEN);
    if !iface::reachable(&st.router_id, dev, Some(ia)) {
        return UCS_ERR_UNREACHABLE;
    }
    let Some(handle) = iface::parse_iface_addr(ia) else { return UCS_ERR_INVALID_ADDR };
    let Some(ctx) = (*st.md).ctx.as_ref() else { return UCS_ERR_NO_DEVICE };
    let start = Instant::now();
    let mut nap = std::time::Duration::from_micros(100);
    let conn = loop {
        match ctx.connect(&handle) {
            Ok(Some(c)) => break c,
            Ok(None) if start.elapsed() < st.cfg.connect_timeout => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(std::time::Duration::from_millis(50));
            }
            Ok(None) => {
                ff_error!("ff: the router kept refusing a connection for {:?} (listener backlog full?)", st.cfg.connect_timeout);
                return UCS_ERR_TIMED_OUT;
            }
            Err(e) => {
                ff_error!("ff: cannot connect to the peer through the router: {e}");
                return UCS_ERR_UNREACHABLE;
            }
        }
    };
    ff_debug!("ff: iface {:p} connected, connection {}", me, conn.id());
    if !iface::fits(&conn, st.cfg.whole_sends()) {
        return UCS_ERR_UNSUPPORTED;
    }
    let words = conn.wake_words().inspect_err(|e| ff_warn!("ff: no wake-up for connection {}: {e}", conn.id())).ok();
    let ep = Box::into_raw(Box::new(Ep {
        super_: uct_ep_t { iface: p.iface },
        iface: me,
        conn,
        pending: VecDeque::new(),
        dispatching: false,
        ops: VecDeque::new(),
        next_seq: 1,
        fence_at: 0,
        sends: VecDeque::new(),
        bulk_ops: 0,
        posted: 0,
        unsent: None,
        go: None,
        held_wait: None,
        flushes: VecDeque::new(),
        broken: None,
        err_reported: false,
        words,
        destroyed: false,
    }));
    (*me).st.eps.push(ep);
    *ep_p = ep as uct_ep_h;
    UCS_OK
}

unsafe extern "C" fn ep_destroy(ep_h: uct_ep_h) {
    let ep = ep_h as *mut Ep;
    let me = (*ep).iface;
    let eps = &mut (*me).st.eps;
    if let Some(i) = eps.iter().position(|&e| e == ep) {
        eps.remove(i);
    }
    (*ep).destroyed = true;
    if (*me).st.in_progress {
        (*me).st.graveyard.push(ep); // freed when progress returns
    } else {
        drop(Box::from_raw(ep));
    }
}

unsafe extern "C" fn am_short(ep_h: uct_ep_h, id: u8, header: u64, payload: *const c_void, length: c_uint) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    if id as u32 >= UCT_AM_ID_MAX {
        return invalid_am_id();
    }
    let total = 8 + length as usize;
    let max = (*(*ep).iface).st.cfg.short_size;
    if total > max {
        ff_error!("Invalid am_short length: {total} (expected: <= {max})");
        return UCS_ERR_INVALID_PARAM;
    }
    if let Some(s) = gate(ep) {
        return s;
    }
    let r = (*ep).conn.try_send_with(proto::tag(proto::AM, id), total, |p| {
        (p as *mut u64).write_unaligned(header);
        std::ptr::copy_nonoverlapping(payload as *const u8, p.add(8), length as usize);
        total
    });
    match r {
        Ok(Some(_)) => UCS_OK,
        Ok(None) => UCS_ERR_NO_RESOURCE,
        Err(e) => break_ep(ep, &e),
    }
}

/// Logged like UCX's UCT_CHECK_AM_ID.
fn invalid_am_id() -> ucs_status_t {
    ff_error!("Invalid active message id (valid range: 0..{})", UCT_AM_ID_MAX - 1);
    UCS_ERR_INVALID_PARAM
}

unsafe extern "C" fn am_short_iov(ep: uct_ep_h, id: u8, iov: *const uct_iov_t, iovcnt: usize) -> ucs_status_t {
    if id as u32 >= UCT_AM_ID_MAX {
        return invalid_am_id();
    }
    uct_base_ep_am_short_iov(ep, id, iov, iovcnt)
}

unsafe extern "C" fn am_bcopy(ep_h: uct_ep_h, id: u8, pack: uct_pack_callback_t, arg: *mut c_void, _flags: c_uint) -> isize {
    let ep = ep_h as *mut Ep;
    if id as u32 >= UCT_AM_ID_MAX {
        return invalid_am_id() as isize;
    }
    let Some(pack) = pack else { return UCS_ERR_INVALID_PARAM as isize };
    if let Some(s) = gate(ep) {
        return s as isize;
    }
    let max = (*(*ep).iface).st.cfg.seg_size;
    // The pack callback is only called once room for max_bcopy is there.
    match (*ep).conn.try_send_with(proto::tag(proto::AM, id), max, |p| pack(p as *mut c_void, arg)) {
        Ok(Some(n)) => n as isize,
        Ok(None) => UCS_ERR_NO_RESOURCE as isize,
        Err(e) => break_ep(ep, &e) as isize,
    }
}

unsafe fn iov_len(iov: *const uct_iov_t, iovcnt: usize) -> usize {
    (0..iovcnt).map(|i| (*iov.add(i)).length * ((*iov.add(i)).count.max(1) as usize)).sum()
}

unsafe fn rkey_of<'a>(rkey: uct_rkey_t) -> Option<&'a Rkey> {
    if rkey == 0 || rkey == usize::MAX {
        return None;
    }
    Some(&*(rkey as *const Rkey))
}

/// May an operation go straight to a peer's mapped memory now? Not while
/// ops issued before the last fence are outstanding (it would overtake
/// them): it then takes the message path, which the peer serves in order.
unsafe fn unfenced(ep: *mut Ep) -> bool {
    (*ep).ops.front().is_none_or(|o| o.seq >= (*ep).fence_at)
}

/// The peer's mapping of `[addr, addr+len)` if an operation on it may go
/// straight there: inside the registration the key names, in the whole
/// pages of it that are shadow memory mapped here (a peer on this host),
/// and not held back by a fence.
unsafe fn direct(ep: *mut Ep, k: &Rkey, addr: u64, len: usize) -> Option<&std::sync::Arc<ffcore::RemoteMap>> {
    if len == 0 || !k.packed.covers(addr, len as u64) || !unfenced(ep) {
        return None;
    }
    let map = k.map(&*(*(*ep).iface).st.md)?;
    (addr >= map.base() && addr + len as u64 <= map.base() + map.len() as u64).then_some(map)
}

unsafe extern "C" fn put_zcopy(ep_h: uct_ep_h, iov: *const uct_iov_t, iovcnt: usize, addr: u64, rkey: uct_rkey_t, comp: *mut uct_completion_t) -> ucs_status_t {
    zcopy(ep_h as *mut Ep, false, iov, iovcnt, addr, rkey, comp)
}

unsafe extern "C" fn get_zcopy(ep_h: uct_ep_h, iov: *const uct_iov_t, iovcnt: usize, addr: u64, rkey: uct_rkey_t, comp: *mut uct_completion_t) -> ucs_status_t {
    zcopy(ep_h as *mut Ep, true, iov, iovcnt, addr, rkey, comp)
}

/// A PUT or GET. The part inside the peer's shadow region, when that is
/// mapped here (same host, same tenant), is copied at once between the two
/// buffers; the rest (the partial pages at either end, or everything)
/// goes as messages the peer serves.
unsafe fn zcopy(ep: *mut Ep, get: bool, iov: *const uct_iov_t, iovcnt: usize, addr: u64, rkey: uct_rkey_t, comp: *mut uct_completion_t) -> ucs_status_t {
    if iovcnt > 1 {
        return UCS_ERR_UNSUPPORTED; // max_iov is 1
    }
    if iov_len(iov, iovcnt) == 0 {
        return UCS_OK; // nothing to move (UCX passes no valid key then)
    }
    let Some(rk) = rkey_of(rkey) else { return UCS_ERR_INVALID_PARAM };
    if let Some(s) = gate(ep) {
        return s;
    }
    let k = rk.packed;
    let len = iov_len(iov, iovcnt);
    let local = if iovcnt == 1 { (*iov).buffer as *mut u8 } else { std::ptr::NonNull::dangling().as_ptr() };
    let md = &*(*(*ep).iface).st.md;
    // Only inside the registration the key names (the target refuses the
    // rest, whatever its shadow segment spans), and not past a fence.
    let mapped = (len > 0 && k.covers(addr, len as u64) && unfenced(ep)).then(|| rk.map(md)).flatten();
    let (Some(sk), Some(map)) = (k.shadow, mapped) else {
        return rma_msg(ep, get, local, len, addr, &k, comp);
    };
    let end = addr.saturating_add(len as u64);
    let (lo, hi) = (addr.max(map.base()), end.min(map.base() + map.len() as u64));
    if hi <= lo {
        return rma_msg(ep, get, local, len, addr, &k, comp);
    }
    let (head, n) = ((lo - addr) as usize, (hi - lo) as usize);
    let mid = local.add(head);
    let copied = if get { map.read(lo, mid, n) } else { map.write(lo, mid, n) };
    if let Err(e) = copied {
        // Revoked: the peer serves (or refuses) it all as messages.
        ff_debug!("ff: peer region {}: {e}", sk.region);
        return rma_msg(ep, get, local, len, addr, &k, comp);
    }
    let tail = (end - hi) as usize;
    // Pieces left: the completion goes with the last. Repeating a piece
    // after NO_RESOURCE is harmless (same bytes to the same place).
    match (head, tail) {
        (0, 0) => UCS_OK,
        (_, 0) => rma_msg(ep, get, local, head, addr, &k, comp),
        (0, _) => rma_msg(ep, get, mid.add(n), tail, hi, &k, comp),
        _ => match rma_msg(ep, get, local, head, addr, &k, std::ptr::null_mut()) {
            UCS_INPROGRESS => rma_msg(ep, get, mid.add(n), tail, hi, &k, comp),
            s => s,
        },
    }
}

/// Most [`GetWay::Posted`] GETs outstanding on an endpoint (each holds a
/// receive in ffcore's table and a post in the router's).
const MAX_POSTED: usize = 64;

/// A PUT or GET of `[addr, addr+len)` served by the peer: the request (with
/// the data, for small PUTs), then the data as a message.
unsafe fn rma_msg(ep: *mut Ep, get: bool, local: *mut u8, len: usize, addr: u64, k: &PackedRkey, comp: *mut uct_completion_t) -> ucs_status_t {
    let seq = (*ep).next_seq;
    let req = RmaReq { seq, cookie: k.cookie, key: k.key, addr, len: len as u64 };
    let inline = !get && len <= (*(*ep).iface).st.cfg.inline_rma;
    let streamed = !get && !inline;
    if streamed && (*ep).sends.len() >= 256 {
        return UCS_ERR_NO_RESOURCE; // keep ffcore's request table from filling
    }
    let max = RmaReq::LEN + if inline { len } else { 0 };
    // A large GET whose data the router could write straight into `local`
    // if the receive were posted before the data reaches it: posted with
    // the request when the messages to come before its data all have
    // receives posted (every op outstanding is such a GET), else held by
    // the target until the receive is posted.
    let way = if !get || len < iface::BULK_MIN || !(*ep).conn.places(local, len) {
        GetWay::Reply
    } else if (*ep).posted == (*ep).ops.len() && (*ep).posted < MAX_POSTED {
        GetWay::Posted
    } else {
        GetWay::Hold
    };
    if way == GetWay::Posted {
        return get_posted(ep, req, local, comp);
    }
    let tag = if get { proto::tag(proto::GET, way.id()) } else { proto::tag(proto::PUT, 0) };
    let r = (*ep).conn.try_send_with(tag, max, |p| {
        req.write(std::slice::from_raw_parts_mut(p, RmaReq::LEN));
        if inline {
            std::ptr::copy_nonoverlapping(local, p.add(RmaReq::LEN), len);
        }
        max
    });
    match r {
        Ok(Some(_)) => {}
        Ok(None) => return UCS_ERR_NO_RESOURCE,
        Err(e) => return break_ep(ep, &e),
    }
    if streamed {
        // The data streams from the caller's buffer, which UCT keeps valid
        // until completion (after the ack, so long after the send).
        match (*ep).conn.isend(local, len, proto::tag(proto::PUT_DATA, 0)) {
            Ok(r) => (*ep).sends.push_back(r),
            Err(e) => return break_ep(ep, &e),
        }
    }
    (*ep).next_seq += 1;
    let kind = if get { OpKind::Get { buf: local, len, way, rx: None } } else { OpKind::Put };
    let bulk = len >= iface::BULK_MIN;
    (*ep).bulk_ops += bulk as usize;
    (*ep).ops.push_back(Op { seq, comp, kind, bulk });
    UCS_INPROGRESS
}

/// A [`GetWay::Posted`] GET (see [`proto::POSTED`]): the receive for its
/// data first, so that the post is in the ring ahead of the request and
/// the router has it before the request leaves; then the request, now or
/// (no room) before anything else is sent (see [`gate`]). Once the receive
/// is posted the GET is issued: the messages that follow must match it.
unsafe fn get_posted(ep: *mut Ep, req: RmaReq, local: *mut u8, comp: *mut uct_completion_t) -> ucs_status_t {
    let len = req.len as usize;
    // UCT keeps `local` ours until completion.
    let rx = match (*ep).conn.irecv(local, len, proto::tag(proto::GET_DATA, 0)) {
        Ok(r) => r,
        Err(e) => return break_ep(ep, &e),
    };
    (*ep).posted += 1;
    (*ep).next_seq += 1;
    (*ep).bulk_ops += 1;
    (*ep).ops.push_back(Op { seq: req.seq, comp, kind: OpKind::Get { buf: local, len, way: GetWay::Posted, rx: Some(rx) }, bulk: true });
    (*ep).unsent = Some(req);
    // Issued whatever this says: a failure broke the endpoint, whose
    // progress then fails the op through its completion like any other.
    let _ = send_unsent(ep);
    UCS_INPROGRESS
}

/// Sends the posted GET's request that had no room yet, if any: Ok(true)
/// once nothing is left unsent, Ok(false) while the ring has no room, or
/// the endpoint's failure.
unsafe fn send_unsent(ep: *mut Ep) -> Result<bool, ucs_status_t> {
    let Some(req) = (*ep).unsent else { return Ok(true) };
    match (*ep).conn.try_send_with(proto::tag(proto::GET, proto::POSTED), RmaReq::LEN, |p| {
        req.write(std::slice::from_raw_parts_mut(p, RmaReq::LEN));
        RmaReq::LEN
    }) {
        Ok(Some(_)) => {
            (*ep).unsent = None;
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(break_ep(ep, &e)),
    }
}

/// A PUT of at most `max` bytes whose data `fill` writes into the request
/// record (it returns how many; called only once there is room), served by
/// the peer. Returns the number of bytes.
unsafe fn put_inline(ep: *mut Ep, k: &PackedRkey, addr: u64, max: usize, fill: impl FnOnce(*mut u8) -> usize) -> Result<usize, ucs_status_t> {
    let seq = (*ep).next_seq;
    let mut n = 0;
    let r = (*ep).conn.try_send_with(proto::tag(proto::PUT, 0), RmaReq::LEN + max, |p| {
        n = fill(p.add(RmaReq::LEN)).min(max);
        RmaReq { seq, cookie: k.cookie, key: k.key, addr, len: n as u64 }.write(std::slice::from_raw_parts_mut(p, RmaReq::LEN));
        RmaReq::LEN + n
    });
    match r {
        Ok(Some(_)) => {}
        Ok(None) => return Err(UCS_ERR_NO_RESOURCE),
        Err(e) => return Err(break_ep(ep, &e)),
    }
    (*ep).next_seq += 1;
    (*ep).ops.push_back(Op { seq, comp: std::ptr::null_mut(), kind: OpKind::Put, bulk: false });
    Ok(n)
}

/// The largest PUT or GET by copy (`put`/`get` `max_short`/`max_bcopy`):
/// what fits inline in a request or reply record.
unsafe fn max_copy(ep: *mut Ep) -> usize {
    (*(*ep).iface).st.cfg.inline_rma
}

/// The checks every short or bcopy RMA of `len` bytes starts with: None
/// for an empty one (nothing to move: `UCS_OK`; UCX passes no valid key
/// then), the key, or the status to fail with.
unsafe fn copy_rma<'a>(ep: *mut Ep, what: &str, len: usize, rkey: uct_rkey_t) -> Result<Option<&'a Rkey>, ucs_status_t> {
    if len == 0 {
        return Ok(None);
    }
    let k = rkey_of(rkey).ok_or(UCS_ERR_INVALID_PARAM)?;
    if len > max_copy(ep) {
        ff_error!("Invalid {what} length: {len} (expected: <= {})", max_copy(ep));
        return Err(UCS_ERR_INVALID_PARAM);
    }
    Ok(Some(k))
}

/// `uct_ep_put_short`: done at once into a peer's mapped memory, else a
/// request carrying the data (`UCS_OK` either way: flush waits for the
/// peer's ack).
unsafe extern "C" fn put_short(ep_h: uct_ep_h, buffer: *const c_void, length: c_uint, addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    let len = length as usize;
    let k = match copy_rma(ep, "put_short", len, rkey) {
        Ok(Some(k)) => k,
        Ok(None) => return UCS_OK,
        Err(s) => return s,
    };
    if let Some(s) = gate(ep) {
        return s;
    }
    if let Some(map) = direct(ep, k, addr, len) {
        if map.write(addr, buffer as *const u8, len).is_ok() {
            return UCS_OK;
        }
    }
    match put_inline(ep, &k.packed, addr, len, |p| {
        std::ptr::copy_nonoverlapping(buffer as *const u8, p, len);
        len
    }) {
        Ok(_) => UCS_OK,
        Err(s) => s,
    }
}

/// `uct_ep_put_bcopy`: UCP's pack callback writes straight into the peer's
/// mapped memory when the largest bcopy fits there, else into the request
/// record in the ring.
unsafe extern "C" fn put_bcopy(ep_h: uct_ep_h, pack: uct_pack_callback_t, arg: *mut c_void, addr: u64, rkey: uct_rkey_t) -> isize {
    let ep = ep_h as *mut Ep;
    let Some(pack) = pack else { return UCS_ERR_INVALID_PARAM as isize };
    let Some(k) = rkey_of(rkey) else {
        // No valid key: only an empty put is fine (UCX passes none then).
        let mut scratch = vec![0u8; max_copy(ep)];
        return if pack(scratch.as_mut_ptr() as *mut c_void, arg) == 0 { 0 } else { UCS_ERR_INVALID_PARAM as isize };
    };
    if let Some(s) = gate(ep) {
        return s as isize;
    }
    let max = max_copy(ep);
    if let Some(map) = direct(ep, k, addr, max) {
        // Bounds were checked for the largest packing; the region is live
        // before and after it (like RemoteMap::write).
        if let (true, Ok(p)) = (map.is_live(), map.ptr(addr, max)) {
            let n = pack(p as *mut c_void, arg);
            if map.is_live() {
                return n as isize;
            }
        }
    }
    match put_inline(ep, &k.packed, addr, max, |p| pack(p as *mut c_void, arg)) {
        Ok(n) => n as isize,
        Err(s) => s as isize,
    }
}

/// `uct_ep_get_short`: `UCS_OK` with the data when the peer's memory is
/// mapped here; else a request, and the data is there once flushed.
unsafe extern "C" fn get_short(ep_h: uct_ep_h, buffer: *mut c_void, length: c_uint, addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    let len = length as usize;
    let k = match copy_rma(ep, "get_short", len, rkey) {
        Ok(Some(k)) => k,
        Ok(None) => return UCS_OK,
        Err(s) => return s,
    };
    if let Some(s) = gate(ep) {
        return s;
    }
    if let Some(map) = direct(ep, k, addr, len) {
        if map.read(addr, buffer as *mut u8, len).is_ok() {
            return UCS_OK;
        }
    }
    rma_msg(ep, true, buffer as *mut u8, len, addr, &k.packed, std::ptr::null_mut())
}

/// `uct_ep_get_bcopy`: UCP's unpack callback reads the peer's mapped
/// memory itself, or the data inline in the peer's reply.
unsafe extern "C" fn get_bcopy(
    ep_h: uct_ep_h,
    unpack: uct_unpack_callback_t,
    arg: *mut c_void,
    len: usize,
    addr: u64,
    rkey: uct_rkey_t,
    comp: *mut uct_completion_t,
) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    let Some(cb) = unpack else { return UCS_ERR_INVALID_PARAM };
    let k = match copy_rma(ep, "get_bcopy", len, rkey) {
        Ok(Some(k)) => k,
        Ok(None) => return UCS_OK,
        Err(s) => return s,
    };
    if let Some(s) = gate(ep) {
        return s;
    }
    if let Some(map) = direct(ep, k, addr, len) {
        if let (true, Ok(p)) = (map.is_live(), map.ptr(addr, len)) {
            cb(arg, p as *const c_void, len);
            if map.is_live() {
                return UCS_OK;
            }
            // Revoked meanwhile: the peer answers (with an error).
        }
    }
    let seq = (*ep).next_seq;
    let req = RmaReq { seq, cookie: k.packed.cookie, key: k.packed.key, addr, len: len as u64 };
    match (*ep).conn.try_send_with(proto::tag(proto::GET, 0), RmaReq::LEN, |p| {
        req.write(std::slice::from_raw_parts_mut(p, RmaReq::LEN));
        RmaReq::LEN
    }) {
        Ok(Some(_)) => {}
        Ok(None) => return UCS_ERR_NO_RESOURCE,
        Err(e) => return break_ep(ep, &e),
    }
    (*ep).next_seq += 1;
    (*ep).ops.push_back(Op { seq, comp, kind: OpKind::GetUnpack { cb, arg, len }, bulk: false });
    UCS_INPROGRESS
}

/// An atomic on the peer's word at `addr`: one CPU atomic through the
/// peer's mapped memory (`UCS_OK`, the old value in `result` at once), or
/// a request the peer performs in its progress and answers (posted ones:
/// `UCS_OK`, flush waits for the answer; fetching ones: `UCS_INPROGRESS`,
/// `result` is written before `comp` completes).
#[allow(clippy::too_many_arguments)]
unsafe fn amo(ep: *mut Ep, width: Width, op: AtomicOp, value: u64, compare: u64, addr: u64, rkey: uct_rkey_t, result: *mut u8, comp: *mut uct_completion_t) -> ucs_status_t {
    let Some(k) = rkey_of(rkey) else { return UCS_ERR_INVALID_PARAM };
    if !ffcore::atomic::aligned(addr, width) {
        ff_error!("ff: atomic on {addr:#x}: not aligned to {} bytes", width.bytes());
        return UCS_ERR_INVALID_PARAM;
    }
    if let Some(s) = gate(ep) {
        return s;
    }
    if let Some(map) = direct(ep, k, addr, width.bytes()) {
        if let Ok(old) = map.atomic(addr, width, op, value, compare) {
            write_result(result, width, old);
            return UCS_OK;
        }
    }
    let seq = (*ep).next_seq;
    let req = AmoReq { seq, cookie: k.packed.cookie, key: k.packed.key, addr, value, compare, op: op.code(), width: width.bytes() as u8 };
    match (*ep).conn.try_send_with(proto::tag(proto::AMO, 0), AmoReq::LEN, |p| {
        req.write(std::slice::from_raw_parts_mut(p, AmoReq::LEN));
        AmoReq::LEN
    }) {
        Ok(Some(_)) => {}
        Ok(None) => return UCS_ERR_NO_RESOURCE,
        Err(e) => return break_ep(ep, &e),
    }
    (*ep).next_seq += 1;
    (*ep).ops.push_back(Op { seq, comp, kind: OpKind::Amo { result, width }, bulk: false });
    if result.is_null() {
        UCS_OK
    } else {
        UCS_INPROGRESS
    }
}

unsafe fn write_result(result: *mut u8, width: Width, old: u64) {
    if result.is_null() {
        return;
    }
    match width {
        Width::W32 => (result as *mut u32).write_unaligned(old as u32),
        Width::W64 => (result as *mut u64).write_unaligned(old),
    }
}

/// UCT's opcode, if `post` (no result) or fetching allows it.
fn amo_op(opcode: c_uint, post: bool) -> Option<AtomicOp> {
    let op = AtomicOp::from_code(u8::try_from(opcode).ok()?)?;
    match op {
        AtomicOp::Add | AtomicOp::And | AtomicOp::Or | AtomicOp::Xor => Some(op),
        AtomicOp::Swap if !post => Some(op),
        _ => None, // cswap has its own entry points
    }
}

unsafe extern "C" fn atomic32_post(ep: uct_ep_h, opcode: c_uint, value: u32, addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
    let Some(op) = amo_op(opcode, true) else { return UCS_ERR_UNSUPPORTED };
    amo(ep as *mut Ep, Width::W32, op, value as u64, 0, addr, rkey, std::ptr::null_mut(), std::ptr::null_mut())
}

unsafe extern "C" fn atomic64_post(ep: uct_ep_h, opcode: c_uint, value: u64, addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
    let Some(op) = amo_op(opcode, true) else { return UCS_ERR_UNSUPPORTED };
    amo(ep as *mut Ep, Width::W64, op, value, 0, addr, rkey, std::ptr::null_mut(), std::ptr::null_mut())
}

unsafe extern "C" fn atomic32_fetch(ep: uct_ep_h, opcode: c_uint, value: u32, result: *mut u32, addr: u64, rkey: uct_rkey_t, comp: *mut uct_completion_t) -> ucs_status_t {
    let Some(op) = amo_op(opcode, false) else { return UCS_ERR_UNSUPPORTED };
    if result.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    amo(ep as *mut Ep, Width::W32, op, value as u64, 0, addr, rkey, result as *mut u8, comp)
}

unsafe extern "C" fn atomic64_fetch(ep: uct_ep_h, opcode: c_uint, value: u64, result: *mut u64, addr: u64, rkey: uct_rkey_t, comp: *mut uct_completion_t) -> ucs_status_t {
    let Some(op) = amo_op(opcode, false) else { return UCS_ERR_UNSUPPORTED };
    if result.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    amo(ep as *mut Ep, Width::W64, op, value, 0, addr, rkey, result as *mut u8, comp)
}

unsafe extern "C" fn atomic_cswap32(ep: uct_ep_h, compare: u32, swap: u32, addr: u64, rkey: uct_rkey_t, result: *mut u32, comp: *mut uct_completion_t) -> ucs_status_t {
    if result.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    amo(ep as *mut Ep, Width::W32, AtomicOp::Cswap, swap as u64, compare as u64, addr, rkey, result as *mut u8, comp)
}

unsafe extern "C" fn atomic_cswap64(ep: uct_ep_h, compare: u64, swap: u64, addr: u64, rkey: uct_rkey_t, result: *mut u64, comp: *mut uct_completion_t) -> ucs_status_t {
    if result.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    amo(ep as *mut Ep, Width::W64, AtomicOp::Cswap, swap, compare, addr, rkey, result as *mut u8, comp)
}

unsafe extern "C" fn pending_add(ep_h: uct_ep_h, req: *mut uct_pending_req_t, _flags: c_uint) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    // BUSY means "resources are there: send now instead". Without waiting
    // requests we cannot know before trying, so a send that just failed
    // with NO_RESOURCE is queued.
    (*ep).pending.push_back(req);
    UCS_OK
}

unsafe extern "C" fn pending_purge(ep_h: uct_ep_h, cb: uct_pending_purge_callback_t, arg: *mut c_void) {
    let ep = ep_h as *mut Ep;
    let reqs: Vec<_> = (*ep).pending.drain(..).collect();
    if let Some(cb) = cb {
        for r in reqs {
            cb(r, arg);
        }
    }
}

unsafe extern "C" fn ep_flush(ep_h: uct_ep_h, _flags: c_uint, comp: *mut uct_completion_t) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    if let Some(s) = (*ep).broken {
        return s;
    }
    if !(*ep).pending.is_empty() && !(*ep).dispatching {
        return UCS_ERR_NO_RESOURCE;
    }
    if (*ep).ops.is_empty() {
        return UCS_OK; // AMs count as done once in the shared ring
    }
    if !comp.is_null() {
        (*ep).flushes.push_back(((*ep).next_seq, comp));
    }
    UCS_INPROGRESS
}

/// `uct_ep_fence`: what is issued from now on is performed after what was
/// issued before. Messages are served in order (one FIFO connection); an
/// operation that would go straight to a peer's mapped memory takes the
/// message path instead while ops from before the fence are outstanding.
pub unsafe extern "C" fn ep_fence(ep_h: uct_ep_h, _flags: c_uint) -> ucs_status_t {
    let ep = ep_h as *mut Ep;
    (*ep).fence_at = (*ep).next_seq;
    UCS_OK
}

/// `uct_invoke_completion`: first error wins, callback when the count hits 0.
unsafe fn complete(comp: *mut uct_completion_t, status: ucs_status_t) {
    if comp.is_null() {
        return;
    }
    if status != UCS_OK && (*comp).status == UCS_OK {
        (*comp).status = status;
    }
    (*comp).count -= 1;
    if (*comp).count == 0 {
        if let Some(f) = (*comp).func {
            f(comp);
        }
    }
}

/// Completes the oldest op and any flush that was waiting only for it.
/// Returns false if the endpoint was destroyed by a callback.
unsafe fn finish_op(ep: *mut Ep, status: ucs_status_t) -> bool {
    let Some(op) = (*ep).ops.pop_front() else { return true };
    (*ep).bulk_ops -= op.bulk as usize;
    (*ep).posted -= matches!(op.kind, OpKind::Get { way: GetWay::Posted, .. }) as usize;
    (*ep).held_wait = None;
    complete(op.comp, status);
    if (*ep).destroyed {
        return false;
    }
    flushes_done(ep)
}

unsafe fn flushes_done(ep: *mut Ep) -> bool {
    let oldest = (*ep).ops.front().map_or(u64::MAX, |o| o.seq);
    while let Some(&(upto, comp)) = (*ep).flushes.front() {
        if upto > oldest {
            break;
        }
        (*ep).flushes.pop_front();
        complete(comp, UCS_OK);
        if (*ep).destroyed {
            return false;
        }
    }
    true
}

/// Fails everything outstanding on a broken endpoint.
unsafe fn fail_all(ep: *mut Ep, status: ucs_status_t) {
    while !(*ep).ops.is_empty() {
        if !finish_op(ep, status) {
            return;
        }
    }
    (*ep).sends.clear();
    (*ep).go = None;
    (*ep).unsent = None;
    while let Some((_, comp)) = (*ep).flushes.pop_front() {
        complete(comp, status);
        if (*ep).destroyed {
            return;
        }
    }
}

enum Got {
    None,
    Done(ucs_status_t),
    /// GET data follows as its own message, for (buffer, length).
    Stream(*mut u8, usize),
    Bad(String),
}

/// Initiator-side progress: replies to our PUTs and GETs, then the pending
/// queue. Returns the number of events.
pub unsafe fn progress(ep: *mut Ep) -> u32 {
    let mut count = 0;
    if let Some(s) = (*ep).broken {
        if !(*ep).ops.is_empty() || !(*ep).flushes.is_empty() {
            fail_all(ep, s);
            return 1;
        }
    }
    while let Some(&r) = (*ep).sends.front() {
        match (*ep).conn.test(r) {
            Ok(None) => break,
            Ok(Some(_)) => {
                (*ep).sends.pop_front();
            }
            Err(e) => {
                (*ep).sends.pop_front();
                let s = break_ep(ep, &e);
                fail_all(ep, s);
                return 1;
            }
        }
    }
    if let Err(s) = send_unsent(ep) {
        fail_all(ep, s);
        return count + 1;
    }
    let burst = (*(*ep).iface).st.cfg.rx_burst;
    while !(*ep).ops.is_empty() && count < burst {
        if (*ep).go.is_some() {
            match send_go(ep) {
                Ok(true) => count += 1,
                Ok(false) => break,
                Err(s) => {
                    fail_all(ep, s);
                    return count + 1;
                }
            }
        }
        if let Some(&Op { kind: OpKind::Get { len, way, rx: Some(r), .. }, seq, .. }) = (*ep).ops.front() {
            let placed = (*ep).conn.placed();
            let res = (*ep).conn.test(r);
            // Messages the router wrote straight into their buffer (only
            // GET data is posted on this connection); one test may finish
            // several posted GETs' placements.
            (*(*ep).iface).st.held_placed += (*ep).conn.placed() - placed;
            match res {
                Ok(None) => {
                    if (*ep).held_wait.get_or_insert_with(Stall::new).due() {
                        ff_warn!(
                            "ff: connection {}: the data of GET {seq} ({way:?}) has not come in {:?}{}; connection: {}",
                            (*ep).conn.id(),
                            STALL_WARN,
                            match (way, (*ep).go.is_some()) {
                                (GetWay::Hold, true) => " (GET_GO not sent yet)",
                                (GetWay::Hold, false) => " (GET_GO sent)",
                                _ => "",
                            },
                            (*ep).conn.describe()
                        );
                    }
                    break;
                }
                Ok(Some(n)) => {
                    let status = if n == len {
                        UCS_OK
                    } else if n == 0 && way == GetWay::Posted {
                        // The target refused it (see proto::POSTED).
                        UCS_ERR_INVALID_ADDR
                    } else {
                        ff_error!("ff: protocol error on connection {}: GET data of {n} bytes for {len}", (*ep).conn.id());
                        (*ep).broken = Some(UCS_ERR_IO_ERROR);
                        fail_all(ep, UCS_ERR_IO_ERROR);
                        return count + 1;
                    };
                    if way != GetWay::Reply && status == UCS_OK {
                        let st = &mut (*(*ep).iface).st;
                        st.held_gets += 1;
                        st.posted_gets += u64::from(way == GetWay::Posted);
                    }
                    count += 1;
                    if !finish_op(ep, status) {
                        return count;
                    }
                    continue;
                }
                Err(e) => {
                    let s = break_ep(ep, &e);
                    fail_all(ep, s);
                    return count + 1;
                }
            }
        }
        let front = *(*ep).ops.front().unwrap();
        let mut got = Got::None;
        let r = (*ep).conn.poll_whole(|tag, data, len| {
            got = reply(&front, tag, data, len);
        });
        match r {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let s = break_ep(ep, &e);
                fail_all(ep, s);
                return count + 1;
            }
        }
        count += 1;
        match got {
            Got::None => {}
            Got::Done(s) => {
                if !finish_op(ep, s) {
                    return count;
                }
            }
            Got::Stream(buf, want) => match (*ep).conn.irecv(buf, want, proto::tag(proto::GET_DATA, 0)) {
                Ok(r) => {
                    if let Some(Op { kind: OpKind::Get { rx, .. }, .. }) = (*ep).ops.front_mut() {
                        *rx = Some(r);
                    }
                    if let OpKind::Get { way: GetWay::Hold, .. } = front.kind {
                        // Posted: now the target may send the data.
                        (*ep).go = Some(front.seq);
                        if let Err(s) = send_go(ep) {
                            fail_all(ep, s);
                            return count;
                        }
                    }
                }
                Err(e) => {
                    let s = break_ep(ep, &e);
                    fail_all(ep, s);
                    return count;
                }
            },
            Got::Bad(why) => {
                ff_error!("ff: protocol error on connection {}: {why}", (*ep).conn.id());
                (*ep).broken = Some(UCS_ERR_IO_ERROR);
                fail_all(ep, UCS_ERR_IO_ERROR);
                return count;
            }
        }
    }
    if (*ep).ops.is_empty() && !(*ep).flushes.is_empty() && !flushes_done(ep) {
        return count;
    }
    count + dispatch_pending(ep)
}

/// How long a held GET's data (initiator), its GET_GO or a GET's data send
/// (target) may take before it is reported at warn level: a diagnostic,
/// nothing is undone.
pub const STALL_WARN: std::time::Duration = std::time::Duration::from_secs(5);

/// Something awaited since a time: reported once, after [`STALL_WARN`].
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    since: Instant,
    told: bool,
}

impl Default for Stall {
    fn default() -> Self {
        Self::new()
    }
}

impl Stall {
    pub fn new() -> Stall {
        Stall { since: Instant::now(), told: false }
    }

    /// True the first time it is asked once [`STALL_WARN`] has passed.
    pub fn due(&mut self) -> bool {
        let due = !self.told && self.since.elapsed() >= STALL_WARN;
        self.told |= due;
        due
    }
}

/// Room a GET_GO record needs in the ring.
const GO_ROOM: usize = 64;
/// Room a GET request record needs in the ring (a posted GET's, unsent).
const REQ_ROOM: usize = (ffcore::ring::REC_HDR + RmaReq::LEN).next_multiple_of(ffcore::ring::ALIGN);

/// Sends the pending GET_GO: Ok(true) if sent, Ok(false) if the ring has no
/// room yet (progress tries again), or the endpoint's failure.
unsafe fn send_go(ep: *mut Ep) -> Result<bool, ucs_status_t> {
    let Some(seq) = (*ep).go else { return Ok(false) };
    match (*ep).conn.try_send_with(proto::tag(proto::GET_GO, 0), 8, |p| {
        std::ptr::copy_nonoverlapping(seq.to_le_bytes().as_ptr(), p, 8);
        8
    }) {
        Ok(Some(_)) => {
            (*ep).go = None;
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(break_ep(ep, &e)),
    }
}

/// A status from the peer: an error code, or IO_ERROR for anything else.
fn peer_status(s: i32) -> ucs_status_t {
    if (-127..=0).contains(&s) {
        s as ucs_status_t
    } else {
        UCS_ERR_IO_ERROR
    }
}

/// Handles a reply for the oldest op while it is in the ring: the header
/// is copied out and checked, inline GET data is copied straight into the
/// op's buffer or handed to its unpack callback (it is the peer's data
/// anyway), an atomic's old value is written to its result.
unsafe fn reply(op: &Op, tag: u32, data: *const u8, len: usize) -> Got {
    let seq = op.seq;
    if proto::kind(tag) == proto::AMO_REPLY {
        let OpKind::Amo { result, width } = op.kind else {
            return Got::Bad(format!("atomic reply while request {seq} is no atomic"));
        };
        // Decoded from a private copy: the peer may still write the ring.
        let Some(r) = proto::copy_header::<{ AmoReply::LEN }>(data, len).and_then(|h| AmoReply::read(&h)) else {
            return Got::Bad("short atomic reply".into());
        };
        if r.seq != seq {
            return Got::Bad(format!("reply for request {} while {} is the oldest", r.seq, seq));
        }
        if r.status == UCS_OK as i32 {
            write_result(result, width, r.old & width.mask());
        }
        return Got::Done(peer_status(r.status));
    }
    let Some(r) = proto::copy_header::<{ RmaReply::LEN }>(data, len).and_then(|h| RmaReply::read(&h)) else {
        return Got::Bad("short reply".into());
    };
    if r.seq != seq {
        return Got::Bad(format!("reply for request {} while {} is the oldest", r.seq, seq));
    }
    match (proto::kind(tag), op.kind) {
        (proto::PUT_ACK, OpKind::Put) => Got::Done(peer_status(r.status)),
        (proto::GET_REPLY, OpKind::Get { buf, len: want, .. }) => {
            if r.status != UCS_OK as i32 {
                return Got::Done(peer_status(r.status));
            }
            if r.len != want as u64 {
                return Got::Bad(format!("GET reply of {} bytes for {want}", r.len));
            }
            if len == RmaReply::LEN + want && want > 0 {
                let _w = ffcore::shadow::writing();
                std::ptr::copy_nonoverlapping(data.add(RmaReply::LEN), buf, want);
                Got::Done(UCS_OK)
            } else if len == RmaReply::LEN && want == 0 {
                Got::Done(UCS_OK)
            } else if len == RmaReply::LEN {
                Got::Stream(buf, want)
            } else {
                Got::Bad(format!("GET reply record of {len} bytes"))
            }
        }
        (proto::GET_REPLY, OpKind::GetUnpack { cb, arg, len: want }) => {
            if r.status != UCS_OK as i32 {
                return Got::Done(peer_status(r.status));
            }
            if r.len != want as u64 || len != RmaReply::LEN + want {
                return Got::Bad(format!("GET reply record of {len} bytes for {want} inline"));
            }
            cb(arg, data.add(RmaReply::LEN) as *const c_void, want);
            Got::Done(UCS_OK)
        }
        (k, _) => Got::Bad(format!("unexpected message kind {k} for request {seq}")),
    }
}

/// Runs the pending queue while sends succeed.
unsafe fn dispatch_pending(ep: *mut Ep) -> u32 {
    let mut n = 0;
    if (*ep).pending.is_empty() || (*ep).dispatching {
        return 0;
    }
    (*ep).dispatching = true;
    while let Some(req) = (*ep).pending.pop_front() {
        let status = match (*req).func {
            Some(f) => f(req),
            None => UCS_OK,
        };
        if (*ep).destroyed {
            return n; // graveyard frees it after progress
        }
        if status == UCS_OK {
            n += 1;
            continue;
        }
        // NO_RESOURCE (not sent) or INPROGRESS (partly sent): keep it first
        // and try again on a later progress.
        (*ep).pending.push_front(req);
        if status == UCS_INPROGRESS {
            n += 1;
        }
        break;
    }
    (*ep).dispatching = false;
    n
}
