//! The exported `rdma_*` functions (`ffcm_NAME`, which build.rs makes
//! `NAME@@RDMACM_1.x`): pointer checks and C structures around [`crate::cm`].
//!
//! Invariants: every id, channel and event pointer the application passes
//! is looked up in the registry ([`reg`]) before use (a stale or foreign
//! pointer gets `EINVAL`, never a dereference); an id's box is freed only
//! once its events are acknowledged (else kept, so an event the
//! application still holds never points at freed memory); no panic
//! crosses into C ([`guard`]).
#![allow(clippy::missing_safety_doc)]
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use crate::cm::{self, lock, Channel, EpAttr, EventBox, Id, IdBox};
use crate::qp;
use crate::sys::*;
use crate::wire::{Conn, PRIVATE_MAX};

/// What the application holds.
#[derive(Default)]
struct Registry {
    ids: HashMap<usize, Arc<Id>>,
    /// Channels, and whether the library made it for a synchronous id.
    channels: HashMap<usize, bool>,
    events: HashSet<usize>,
}

fn reg() -> MutexGuard<'static, Registry> {
    static REG: OnceLock<Mutex<Registry>> = OnceLock::new();
    lock(REG.get_or_init(Default::default))
}

pub(crate) fn set_errno(e: i32) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

/// -1 with errno `e`, as librdmacm fails.
fn fail(e: i32) -> c_int {
    set_errno(e);
    -1
}

fn done(r: Result<(), i32>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// An entry point that returns 0, or -1 with errno: its body's result.
fn call(f: impl FnOnce() -> Result<(), i32>) -> c_int {
    guard(-1, || done(f()))
}

/// Runs an entry point's body; a panic is -1 with EIO, not an unwind into C.
fn guard<T>(failed: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("ffrdmacm: internal error (a panic), the call fails with EIO");
            set_errno(libc::EIO);
            failed
        }
    }
}

/// What the generated stubs call: says once per process what is missing.
pub fn unsupported(name: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("FFVERBS_QUIET").is_none() {
            eprintln!("ffrdmacm: {name} is not supported by the FreeFlow connection manager (ENOSYS)");
        }
    });
    set_errno(libc::ENOSYS);
}

/// The id behind an application's pointer.
fn id_of(p: *mut rdma_cm_id) -> Result<Arc<Id>, i32> {
    reg().ids.get(&(p as usize)).cloned().ok_or(libc::EINVAL)
}

/// An id the engine made (a connection request's), now the application's:
/// `raw` is the leaked box, `id` its state.
pub fn adopt_id(raw: *mut IdBox, id: Arc<Id>) {
    reg().ids.insert(raw as usize, id);
}

fn channel_of(p: *mut rdma_event_channel) -> Result<&'static Channel, i32> {
    if reg().channels.contains_key(&(p as usize)) {
        // SAFETY: registered channels are live boxes (`raw` first).
        Ok(unsafe { &*(p as *const Channel) })
    } else {
        Err(libc::EINVAL)
    }
}

fn is_sync(id: &Id) -> bool {
    let ch = id.channel.load(std::sync::atomic::Ordering::Relaxed);
    reg().channels.get(&ch).copied().unwrap_or(false)
}

/// A synchronous id's call waits for its event: Ok if it is `want`, else
/// the error it says. As librdmacm, the event stays in the id's `event`
/// until the next such call or the id's end acknowledges it.
fn sync_wait(p: *mut rdma_cm_id, id: &Arc<Id>, want: rdma_cm_event_type) -> Result<(), i32> {
    if !is_sync(id) {
        return Ok(());
    }
    // SAFETY: p is the registered id's C struct.
    unsafe { ack_held(p) };
    // SAFETY: a sync id's channel is its own, live while the id is.
    let ch = unsafe { &*(id.channel.load(std::sync::atomic::Ordering::Relaxed) as *const Channel) };
    let e = ch.get()?;
    let (ev, status) = (e.ev.event, e.ev.status);
    let ptr = Box::into_raw(e);
    reg().events.insert(ptr as usize);
    // SAFETY: as above.
    unsafe { (*p).event = ptr as *mut rdma_cm_event };
    if ev == want && status == 0 {
        return Ok(());
    }
    Err(match ev {
        RDMA_CM_EVENT_REJECTED => libc::ECONNREFUSED,
        _ if status < 0 => -status,
        _ => libc::EIO,
    })
}

/// Acknowledges the event a synchronous call left in the id.
unsafe fn ack_held(p: *mut rdma_cm_id) {
    // SAFETY: the caller's registered id.
    let e = unsafe { std::mem::replace(&mut (*p).event, std::ptr::null_mut()) };
    if !e.is_null() {
        unsafe { ffcm_rdma_ack_cm_event(e) };
    }
}

fn sockaddr(sa: *const libc::sockaddr) -> Result<libc::sockaddr_storage, i32> {
    if sa.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: the application's address, read by its family's size.
    unsafe {
        let mut out: libc::sockaddr_storage = std::mem::zeroed();
        let n = match (*sa).sa_family as i32 {
            libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => return Err(libc::EAFNOSUPPORT),
        };
        std::ptr::copy_nonoverlapping(sa as *const u8, &mut out as *mut _ as *mut u8, n);
        Ok(out)
    }
}

/// Refreshes the C id from the state: addresses, device.
fn sync_raw(p: *mut rdma_cm_id, id: &Id) {
    let mut st = lock(&id.st);
    // SAFETY: p is the registered id's own C struct.
    unsafe {
        cm::set_route(&mut *p, &st);
        qp::attach(&mut *p);
        st.dev = (*p).verbs as usize;
    }
}

/// The ids the application holds.
pub fn ids() -> Vec<Arc<Id>> {
    reg().ids.values().cloned().collect()
}

fn qp_type_of(ps: rdma_port_space) -> ibv_qp_type {
    match ps {
        RDMA_PS_UDP | RDMA_PS_IPOIB => IBV_QPT_UD,
        _ => IBV_QPT_RC,
    }
}

#[no_mangle]
pub extern "C" fn ffcm_rdma_create_event_channel() -> *mut rdma_event_channel {
    guard(std::ptr::null_mut(), || match Channel::new() {
        Ok(c) => {
            let p = Box::into_raw(c) as *mut rdma_event_channel;
            reg().channels.insert(p as usize, false);
            p
        }
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::EIO));
            std::ptr::null_mut()
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_destroy_event_channel(ch: *mut rdma_event_channel) {
    guard((), || {
        let mut r = reg();
        if r.channels.remove(&(ch as usize)).is_none() {
            return;
        }
        // A channel with ids is kept (their events would point into it).
        let used = r.ids.values().any(|i| i.channel.load(std::sync::atomic::Ordering::Relaxed) == ch as usize);
        drop(r);
        if !used {
            // SAFETY: registered, so a box of ours; unregistered now.
            drop(unsafe { Box::from_raw(ch as *mut Channel) });
        }
    })
}

/// `ch`, or for NULL a channel of the id's own (a synchronous id's, as
/// librdmacm makes for `rdma_create_id` and `rdma_migrate_id` without one).
fn channel_or_own(ch: *mut rdma_event_channel) -> Result<*mut rdma_event_channel, i32> {
    if !ch.is_null() {
        return Ok(ch);
    }
    let own = ffcm_rdma_create_event_channel();
    if own.is_null() {
        return Err(cm::errno());
    }
    reg().channels.insert(own as usize, true);
    Ok(own)
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_id(ch: *mut rdma_event_channel, out: *mut *mut rdma_cm_id, context: *mut c_void, ps: rdma_port_space) -> c_int {
    guard(-1, || {
        if out.is_null() {
            return fail(libc::EINVAL);
        }
        let qpt = qp_type_of(ps);
        let channel = match channel_or_own(ch).and_then(channel_of) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let b = cm::new_id(channel, context, ps, qpt);
        let id = b.id.clone();
        let p = Box::into_raw(b) as *mut rdma_cm_id;
        reg().ids.insert(p as usize, id);
        // SAFETY: out checked above.
        unsafe { *out = p };
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_destroy_id(p: *mut rdma_cm_id) -> c_int {
    guard(-1, || {
        if id_of(p).is_err() {
            return fail(libc::EINVAL);
        }
        // SAFETY: a registered id's C struct.
        unsafe { ack_held(p) };
        let Some(id) = reg().ids.remove(&(p as usize)) else { return fail(libc::EINVAL) };
        for child in cm::retire(&id) {
            // Requests to a listener that goes, never reported: refused
            // (their peers see the connection close) and freed.
            unsafe { ffcm_rdma_destroy_id(child as *mut rdma_cm_id) };
        }
        // The CQs rdma_create_qp made go with the queue pair
        // (rdma_destroy_qp); with one left (the application's leak, as
        // librdmacm's), they stay too rather than go under it.
        // SAFETY: p was registered: our IdBox.
        if unsafe { (*p).qp.is_null() } {
            unsafe { destroy_cqs(p, &id) };
        }
        let ch = id.channel.load(std::sync::atomic::Ordering::Relaxed);
        if id.wait_acked(Duration::from_secs(5)) {
            // SAFETY: unregistered, every event acknowledged: nothing
            // points at it any more.
            drop(unsafe { Box::from_raw(p as *mut IdBox) });
        } else {
            eprintln!("ffrdmacm: rdma_destroy_id with events not acknowledged after 5 s: the id is left allocated");
        }
        let sync = reg().channels.get(&ch).copied().unwrap_or(false);
        if sync {
            // SAFETY: the id's own channel.
            unsafe { ffcm_rdma_destroy_event_channel(ch as *mut _) };
        }
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_bind_addr(p: *mut rdma_cm_id, addr: *mut libc::sockaddr) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let sa = sockaddr(addr)?;
        qp::device()?;
        cm::bind(&id, sa)?;
        sync_raw(p, &id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_resolve_addr(p: *mut rdma_cm_id, src: *mut libc::sockaddr, dst: *mut libc::sockaddr, _timeout_ms: c_int) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let d = sockaddr(dst)?;
        qp::device()?;
        if !src.is_null() && lock(&id.st).phase == cm::Phase::Idle {
            // SAFETY: src is the application's sockaddr.
            let mut s = sockaddr(src)?;
            set_port(&mut s, 0);
            cm::bind(&id, s)?;
        }
        cm::resolve(&id, d)?;
        sync_raw(p, &id);
        cm::report(&id, None, RDMA_CM_EVENT_ADDR_RESOLVED, 0, cm::Param::None);
        sync_wait(p, &id, RDMA_CM_EVENT_ADDR_RESOLVED)
    })
}

fn set_port(sa: &mut libc::sockaddr_storage, port: u16) {
    // SAFETY: writing the family's own struct in the storage.
    unsafe {
        match sa.ss_family as i32 {
            libc::AF_INET => (*(sa as *mut _ as *mut libc::sockaddr_in)).sin_port = port,
            libc::AF_INET6 => (*(sa as *mut _ as *mut libc::sockaddr_in6)).sin6_port = port,
            _ => {}
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_resolve_route(p: *mut rdma_cm_id, _timeout_ms: c_int) -> c_int {
    call(|| {
        let id = id_of(p)?;
        cm::route(&id)?;
        cm::report(&id, None, RDMA_CM_EVENT_ROUTE_RESOLVED, 0, cm::Param::None);
        sync_wait(p, &id, RDMA_CM_EVENT_ROUTE_RESOLVED)
    })
}

/// The CQs (and channels) `rdma_create_qp` made for the id go.
unsafe fn destroy_cqs(p: *mut rdma_cm_id, id: &Id) {
    let cqs = std::mem::take(&mut lock(&id.st).own_cqs);
    for (cq, ch) in cqs {
        // SAFETY: CQs and channels we made for this id, no QP on them any
        // more (rdma_destroy_qp first, as librdmacm requires).
        unsafe {
            ibv_destroy_cq(cq as *mut _);
            ibv_destroy_comp_channel(ch as *mut _);
        }
    }
    // SAFETY: the id's own C struct.
    unsafe {
        (*p).send_cq = std::ptr::null_mut();
        (*p).recv_cq = std::ptr::null_mut();
        (*p).send_cq_channel = std::ptr::null_mut();
        (*p).recv_cq_channel = std::ptr::null_mut();
    }
}

/// A CQ with a completion channel of its own, for `rdma_create_qp`
/// without one (as librdmacm makes them).
unsafe fn own_cq(ctx: *mut ibv_context, depth: u32, id: &Id) -> Result<(*mut ibv_comp_channel, *mut ibv_cq), i32> {
    // SAFETY: a live context.
    unsafe {
        let ch = ibv_create_comp_channel(ctx);
        if ch.is_null() {
            return Err(cm::errno());
        }
        let cq = ibv_create_cq(ctx, depth.max(1) as c_int, std::ptr::null_mut(), ch, 0);
        if cq.is_null() {
            let e = cm::errno();
            ibv_destroy_comp_channel(ch);
            return Err(e);
        }
        lock(&id.st).own_cqs.push((cq as usize, ch as usize));
        Ok((ch, cq))
    }
}

/// `rdma_create_qp` and `rdma_create_qp_ex`: `send_ops`, the `ibv_wr_*`
/// operations asked for (`IBV_QP_INIT_ATTR_SEND_OPS_FLAGS`), 0 if none.
unsafe fn create_qp(p: *mut rdma_cm_id, pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr, send_ops: u64) -> Result<(), i32> {
    let id = id_of(p)?;
    if attr.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: p is registered (our IdBox); attr is the application's.
    unsafe {
        if !(*p).qp.is_null() {
            return Err(libc::EINVAL);
        }
        // The id's device (a removed one's stays the id's), else ff0.
        let ctx = if (*p).verbs.is_null() { qp::device()? } else { (*p).verbs };
        let pd = if !pd.is_null() {
            pd
        } else if !(*p).pd.is_null() {
            (*p).pd
        } else {
            qp::default_pd()?
        };
        let a = &mut *attr;
        if a.send_cq.is_null() {
            let (ch, cq) = own_cq(ctx, a.cap.max_send_wr, &id)?;
            ((*p).send_cq_channel, (*p).send_cq) = (ch, cq);
            a.send_cq = cq;
        }
        if a.recv_cq.is_null() {
            let (ch, cq) = own_cq(ctx, a.cap.max_recv_wr, &id)?;
            ((*p).recv_cq_channel, (*p).recv_cq) = (ch, cq);
            a.recv_cq = cq;
        }
        if a.srq.is_null() {
            a.srq = (*p).srq;
        }
        let q = if send_ops == 0 { ibv_create_qp(pd, a) } else { qp::create_qp_ex(ctx, pd, a, send_ops) };
        if q.is_null() {
            let e = cm::errno();
            destroy_cqs(p, &id);
            return Err(e);
        }
        // A UD queue pair is ready at once (INIT, RTR, RTS), as librdmacm
        // makes it; a connected one waits for its peer.
        let ready = qp::to_init(q as usize).and_then(|()| {
            if qp::qp_type(q as usize) == Some(IBV_QPT_UD) {
                qp::to_rts(q as usize, &Conn::default(), &Conn::default())
            } else {
                Ok(())
            }
        });
        if let Err(e) = ready {
            ibv_destroy_qp(q);
            destroy_cqs(p, &id);
            return Err(e);
        }
        (*p).qp = q;
        (*p).pd = pd;
        lock(&id.st).qp = q as usize;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_qp(p: *mut rdma_cm_id, pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> c_int {
    call(|| unsafe { create_qp(p, pd, attr, 0) })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_qp_ex(p: *mut rdma_cm_id, attr: *mut ibv_qp_init_attr_ex) -> c_int {
    guard(-1, || {
        if attr.is_null() {
            return fail(libc::EINVAL);
        }
        // SAFETY: the application's attributes.
        let x = unsafe { &mut *attr };
        // What ibv_qp_init_attr has, and the ibv_wr_* operations (ffverbs
        // says which it does); anything more is not done.
        if x.comp_mask & !(IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) != 0 {
            return fail(libc::ENOSYS);
        }
        let ops = if x.comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS != 0 { x.send_ops_flags } else { 0 };
        let pd = if x.comp_mask & IBV_QP_INIT_ATTR_PD != 0 { x.pd } else { std::ptr::null_mut() };
        let mut a = ibv_qp_init_attr {
            qp_context: x.qp_context,
            send_cq: x.send_cq,
            recv_cq: x.recv_cq,
            srq: x.srq,
            cap: x.cap,
            qp_type: x.qp_type,
            sq_sig_all: x.sq_sig_all,
        };
        let r = done(unsafe { create_qp(p, pd, &mut a, ops) });
        x.cap = a.cap;
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_destroy_qp(p: *mut rdma_cm_id) {
    guard((), || {
        let Ok(id) = id_of(p) else { return };
        // SAFETY: a registered id's C struct; its QP is the one we made.
        unsafe {
            let q = (*p).qp;
            if !q.is_null() {
                lock(&id.st).qp = 0;
                ibv_destroy_qp(q);
                (*p).qp = std::ptr::null_mut();
            }
            destroy_cqs(p, &id);
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_srq(p: *mut rdma_cm_id, pd: *mut ibv_pd, attr: *mut ibv_srq_init_attr) -> c_int {
    call(|| {
        id_of(p)?;
        if attr.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: a registered id's C struct; attr the application's.
        unsafe {
            let pd = if pd.is_null() { qp::default_pd()? } else { pd };
            let s = ibv_create_srq(pd, attr);
            if s.is_null() {
                return Err(cm::errno());
            }
            (*p).srq = s;
            (*p).pd = pd;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_srq_ex(p: *mut rdma_cm_id, attr: *mut ibv_srq_init_attr_ex) -> c_int {
    guard(-1, || {
        if attr.is_null() {
            return fail(libc::EINVAL);
        }
        // SAFETY: the application's attributes.
        let x = unsafe { &*attr };
        let mut a = ibv_srq_init_attr { srq_context: x.srq_context, attr: x.attr };
        let pd = if x.comp_mask & IBV_SRQ_INIT_ATTR_PD != 0 { x.pd } else { std::ptr::null_mut() };
        unsafe { ffcm_rdma_create_srq(p, pd, &mut a) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_destroy_srq(p: *mut rdma_cm_id) {
    guard((), || {
        if id_of(p).is_err() {
            return;
        }
        // SAFETY: a registered id's C struct.
        unsafe {
            if !(*p).srq.is_null() {
                ibv_destroy_srq((*p).srq);
                (*p).srq = std::ptr::null_mut();
            }
        }
    })
}

/// What this side says in its REQ or REP.
unsafe fn local_conn(p: *mut rdma_cm_id, param: *const rdma_conn_param) -> Result<Conn, i32> {
    let id = id_of(p)?;
    let q = lock(&id.st).qp;
    let mut c = Conn {
        qp_num: qp::qp_num(q),
        psn: rand_psn(),
        gid: qp::gid()?,
        qp_type: qp::qp_type(q).unwrap_or(IBV_QPT_RC),
        responder_resources: 1,
        initiator_depth: 1,
        retry_count: 7,
        rnr_retry_count: 7,
        qkey: RDMA_UDP_QKEY,
        ..Conn::default()
    };
    if !param.is_null() {
        // SAFETY: the application's parameters.
        let m = unsafe { &*param };
        c.responder_resources = m.responder_resources;
        c.initiator_depth = m.initiator_depth;
        c.flow_control = m.flow_control;
        c.retry_count = m.retry_count;
        c.rnr_retry_count = m.rnr_retry_count;
        c.srq = m.srq;
        if q == 0 {
            c.qp_num = m.qp_num;
        }
        if !m.private_data.is_null() && m.private_data_len > 0 {
            let n = (m.private_data_len as usize).min(PRIVATE_MAX);
            // SAFETY: the application says it has that many bytes.
            c.private = unsafe { std::slice::from_raw_parts(m.private_data as *const u8, n) }.to_vec();
        }
    }
    Ok(c)
}

fn rand_psn() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: 4 bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut _, 4, 0) };
    u32::from_le_bytes(b) & 0xff_ffff
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_connect(p: *mut rdma_cm_id, param: *mut rdma_conn_param) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let c = unsafe { local_conn(p, param) }?;
        cm::connect(&id, c)?;
        sync_raw(p, &id);
        sync_wait(p, &id, RDMA_CM_EVENT_ESTABLISHED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_listen(p: *mut rdma_cm_id, backlog: c_int) -> c_int {
    call(|| {
        let id = id_of(p)?;
        cm::listen(&id, backlog)?;
        sync_raw(p, &id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_get_request(listen: *mut rdma_cm_id, out: *mut *mut rdma_cm_id) -> c_int {
    call(|| {
        let id = id_of(listen)?;
        if out.is_null() || !is_sync(&id) {
            return Err(libc::EINVAL);
        }
        // SAFETY: a sync id's own channel.
        let ch = unsafe { &*(id.channel.load(std::sync::atomic::Ordering::Relaxed) as *const Channel) };
        // SAFETY: the registered listener's C struct.
        unsafe { ack_held(listen) };
        let e = ch.get()?;
        let (ev, status, child) = (e.ev.event, e.ev.status, e.ev.id);
        let ptr = Box::into_raw(e);
        reg().events.insert(ptr as usize);
        if ev != RDMA_CM_EVENT_CONNECT_REQUEST || status != 0 {
            // SAFETY: the listener's C struct keeps it till the next call.
            unsafe { (*listen).event = ptr as *mut rdma_cm_event };
            return Err(if ev == RDMA_CM_EVENT_REJECTED {
                libc::ECONNREFUSED
            } else if status < 0 {
                -status
            } else {
                libc::EINVAL
            });
        }
        // SAFETY: the child's C struct holds its request (its
        // accept or end acknowledges it).
        unsafe { (*child).event = ptr as *mut rdma_cm_event };
        // The child answers on a channel of its own (synchronous too).
        if unsafe { ffcm_rdma_migrate_id(child, std::ptr::null_mut()) } != 0 {
            return Err(cm::errno());
        }
        let ep = lock(&id.st).ep_attr;
        if let Some(EpAttr { mut attr, pd }) = ep {
            // SAFETY: the listener's C struct.
            let pd = if pd != 0 { pd as *mut ibv_pd } else { unsafe { (*listen).pd } };
            unsafe { create_qp(child, pd, &mut attr, 0) }?;
        }
        // SAFETY: out checked.
        unsafe { *out = child };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_accept(p: *mut rdma_cm_id, param: *mut rdma_conn_param) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let c = unsafe { local_conn(p, param) }?;
        cm::accept(&id, c)?;
        if lock(&id.st).ud {
            // No ESTABLISHED on the passive side of a UD id.
            // SAFETY: the registered id's C struct.
            unsafe { ack_held(p) };
            return Ok(());
        }
        sync_wait(p, &id, RDMA_CM_EVENT_ESTABLISHED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_reject(p: *mut rdma_cm_id, data: *const c_void, len: u8) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let private = if data.is_null() || len == 0 {
            Vec::new()
        } else {
            // SAFETY: the application says it has len bytes.
            unsafe { std::slice::from_raw_parts(data as *const u8, len as usize) }.to_vec()
        };
        cm::reject(&id, private)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_notify(p: *mut rdma_cm_id, _event: ibv_event_type) -> c_int {
    call(|| id_of(p).map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_establish(p: *mut rdma_cm_id) -> c_int {
    call(|| id_of(p).and_then(|id| cm::establish(&id)))
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_disconnect(p: *mut rdma_cm_id) -> c_int {
    call(|| id_of(p).and_then(|id| cm::disconnect(&id)))
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_init_qp_attr(p: *mut rdma_cm_id, attr: *mut ibv_qp_attr, mask: *mut c_int) -> c_int {
    call(|| {
        let id = id_of(p)?;
        if attr.is_null() || mask.is_null() {
            return Err(libc::EINVAL);
        }
        let st = lock(&id.st);
        // SAFETY: the application's attributes.
        let a = unsafe { &mut *attr };
        // What the library's own transitions use.
        let (x, m) = qp::attr(a.qp_state, st.ud, &st.local, st.peer.as_ref())?;
        *a = x;
        // SAFETY: checked above.
        unsafe { *mask = m as c_int };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_get_cm_event(ch: *mut rdma_event_channel, out: *mut *mut rdma_cm_event) -> c_int {
    call(|| {
        let ch = channel_of(ch)?;
        if out.is_null() {
            return Err(libc::EINVAL);
        }
        let e = ch.get()?;
        let p = Box::into_raw(e);
        reg().events.insert(p as usize);
        // SAFETY: checked above.
        unsafe { *out = p as *mut rdma_cm_event };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_ack_cm_event(ev: *mut rdma_cm_event) -> c_int {
    guard(-1, || {
        if !reg().events.remove(&(ev as usize)) {
            return fail(libc::EINVAL);
        }
        // SAFETY: a registered event: our box, handed back once.
        let e = unsafe { Box::from_raw(ev as *mut EventBox) };
        e.owner.ack();
        0
    })
}

#[no_mangle]
pub extern "C" fn ffcm_rdma_event_str(ev: rdma_cm_event_type) -> *const c_char {
    let s: &'static CStr = match ev {
        RDMA_CM_EVENT_ADDR_RESOLVED => c"RDMA_CM_EVENT_ADDR_RESOLVED",
        RDMA_CM_EVENT_ADDR_ERROR => c"RDMA_CM_EVENT_ADDR_ERROR",
        RDMA_CM_EVENT_ROUTE_RESOLVED => c"RDMA_CM_EVENT_ROUTE_RESOLVED",
        RDMA_CM_EVENT_ROUTE_ERROR => c"RDMA_CM_EVENT_ROUTE_ERROR",
        RDMA_CM_EVENT_CONNECT_REQUEST => c"RDMA_CM_EVENT_CONNECT_REQUEST",
        RDMA_CM_EVENT_CONNECT_RESPONSE => c"RDMA_CM_EVENT_CONNECT_RESPONSE",
        RDMA_CM_EVENT_CONNECT_ERROR => c"RDMA_CM_EVENT_CONNECT_ERROR",
        RDMA_CM_EVENT_UNREACHABLE => c"RDMA_CM_EVENT_UNREACHABLE",
        RDMA_CM_EVENT_REJECTED => c"RDMA_CM_EVENT_REJECTED",
        RDMA_CM_EVENT_ESTABLISHED => c"RDMA_CM_EVENT_ESTABLISHED",
        RDMA_CM_EVENT_DISCONNECTED => c"RDMA_CM_EVENT_DISCONNECTED",
        RDMA_CM_EVENT_DEVICE_REMOVAL => c"RDMA_CM_EVENT_DEVICE_REMOVAL",
        RDMA_CM_EVENT_MULTICAST_JOIN => c"RDMA_CM_EVENT_MULTICAST_JOIN",
        RDMA_CM_EVENT_MULTICAST_ERROR => c"RDMA_CM_EVENT_MULTICAST_ERROR",
        RDMA_CM_EVENT_ADDR_CHANGE => c"RDMA_CM_EVENT_ADDR_CHANGE",
        RDMA_CM_EVENT_TIMEWAIT_EXIT => c"RDMA_CM_EVENT_TIMEWAIT_EXIT",
        _ => c"UNKNOWN EVENT",
    };
    s.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_set_option(p: *mut rdma_cm_id, level: c_int, name: c_int, val: *mut c_void, _len: usize) -> c_int {
    guard(-1, || {
        if id_of(p).is_err() || val.is_null() {
            return fail(libc::EINVAL);
        }
        // Accepted and without effect: type of service, address reuse (the
        // socket has it), IPv6-only, ACK timeout, an IB path record.
        match (level as u32, name as u32) {
            (RDMA_OPTION_ID, RDMA_OPTION_ID_TOS | RDMA_OPTION_ID_REUSEADDR | RDMA_OPTION_ID_AFONLY | RDMA_OPTION_ID_ACK_TIMEOUT) => 0,
            (RDMA_OPTION_IB, RDMA_OPTION_IB_PATH) => 0,
            _ => fail(libc::ENOSYS),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_migrate_id(p: *mut rdma_cm_id, ch: *mut rdma_event_channel) -> c_int {
    call(|| {
        let id = id_of(p)?;
        let ch = channel_or_own(ch)?;
        let c = channel_of(ch)?;
        // Events still queued on the old channel stay there.
        cm::migrate(&id, c);
        // SAFETY: the id's C struct.
        unsafe { (*p).channel = ch };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_get_devices(num: *mut c_int) -> *mut *mut ibv_context {
    guard(std::ptr::null_mut(), || {
        let dev = qp::device().ok();
        let n = dev.is_some() as usize;
        // SAFETY: a NULL-terminated array the application frees with
        // rdma_free_devices (libc's free).
        unsafe {
            let list = libc::calloc(n + 1, std::mem::size_of::<*mut ibv_context>()) as *mut *mut ibv_context;
            if list.is_null() {
                set_errno(libc::ENOMEM);
                return std::ptr::null_mut();
            }
            if let Some(d) = dev {
                *list = d;
            }
            if !num.is_null() {
                *num = n as c_int;
            }
            list
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_free_devices(list: *mut *mut ibv_context) {
    // SAFETY: what rdma_get_devices allocated.
    unsafe { libc::free(list as *mut c_void) };
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_get_src_port(p: *mut rdma_cm_id) -> u16 {
    guard(0, || id_of(p).ok().and_then(|id| cm::port_of(&lock(&id.st).src)).unwrap_or(0))
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_get_dst_port(p: *mut rdma_cm_id) -> u16 {
    guard(0, || id_of(p).ok().and_then(|id| cm::port_of(&lock(&id.st).dst)).unwrap_or(0))
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_getaddrinfo(node: *const c_char, service: *const c_char, hints: *const rdma_addrinfo, res: *mut *mut rdma_addrinfo) -> c_int {
    guard(-1, || unsafe { crate::addrinfo::getaddrinfo(node, service, hints, res) })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_freeaddrinfo(res: *mut rdma_addrinfo) {
    guard((), || unsafe { crate::addrinfo::freeaddrinfo(res) })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_create_ep(out: *mut *mut rdma_cm_id, res: *mut rdma_addrinfo, pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> c_int {
    guard(-1, || {
        if out.is_null() || res.is_null() {
            return fail(libc::EINVAL);
        }
        // SAFETY: the application's address info (ours, from
        // rdma_getaddrinfo, or its own of the same layout).
        let ai = unsafe { &*res };
        let ps = if ai.ai_port_space != 0 { ai.ai_port_space as rdma_port_space } else { RDMA_PS_TCP };
        let qpt = if ai.ai_qp_type != 0 { ai.ai_qp_type as ibv_qp_type } else { qp_type_of(ps) };
        if !attr.is_null() {
            // SAFETY: the application's attributes: the queue pair is of
            // the address's type, as librdmacm makes it.
            unsafe { (*attr).qp_type = qpt };
        }
        let mut p: *mut rdma_cm_id = std::ptr::null_mut();
        if unsafe { ffcm_rdma_create_id(std::ptr::null_mut(), &mut p, std::ptr::null_mut(), ps) } != 0 {
            return -1;
        }
        let r = (|| {
            let id = id_of(p)?;
            if ai.ai_flags & RAI_PASSIVE as c_int != 0 {
                if unsafe { ffcm_rdma_bind_addr(p, ai.ai_src_addr as *mut libc::sockaddr) } != 0 {
                    return Err(cm::errno());
                }
                if !attr.is_null() {
                    // SAFETY: the application's attributes, copied.
                    lock(&id.st).ep_attr = Some(EpAttr { attr: unsafe { *attr }, pd: pd as usize });
                }
                if !pd.is_null() {
                    // SAFETY: the id's C struct.
                    unsafe { (*p).pd = pd };
                }
                return Ok(());
            }
            if unsafe { ffcm_rdma_resolve_addr(p, ai.ai_src_addr as *mut libc::sockaddr, ai.ai_dst_addr as *mut libc::sockaddr, 2000) } != 0 || unsafe { ffcm_rdma_resolve_route(p, 2000) } != 0 {
                return Err(cm::errno());
            }
            if !attr.is_null() {
                unsafe { create_qp(p, pd, attr, 0) }?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                // SAFETY: checked above.
                unsafe { *out = p };
                0
            }
            Err(e) => {
                unsafe { ffcm_rdma_destroy_id(p) };
                fail(e)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffcm_rdma_destroy_ep(p: *mut rdma_cm_id) {
    guard((), || unsafe {
        ffcm_rdma_destroy_qp(p);
        ffcm_rdma_destroy_srq(p);
        ffcm_rdma_destroy_id(p);
    })
}
