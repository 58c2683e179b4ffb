//! The `ibv_wr_*` interface (rdma-core's "new post send", what perftest
//! uses by default): between `ibv_wr_start` and `ibv_wr_complete` an
//! application builds send work requests one call at a time in the queue
//! pair's `ibv_qp_ex` (an operation, then its data: `ibv_wr_set_sge`, a
//! list, or inline bytes; on UD the destination), and `ibv_wr_complete`
//! posts them all, or none if one cannot be posted, through the checks of
//! `ibv_post_send` ([`crate::abi::post_list`]). Every queue pair ff0 makes
//! has this interface (`ibv_qp_to_qp_ex`); `ibv_create_qp_ex` takes the
//! operations it offers (RC: SEND, WRITE, with immediates, READ and the
//! two 64-bit atomics; UC: SEND and WRITE; UD: SEND) and refuses others
//! with `EOPNOTSUPP`, as does `ibv_wr_complete` for a batch that used one.
//!
//! Invariants (unsafe: the C boundary): the application's `ibv_qp_ex` is
//! the first field of our [`QpBox`], so its pointer is the box's. A batch
//! is built by one thread at a time: `ibv_wr_start` takes the queue
//! pair's batch lock, `ibv_wr_complete` and `ibv_wr_abort` give it back
//! (as a NIC's provider holds the queue pair's lock between them); calls
//! from a thread that did not start the batch change nothing (complete
//! and abort fail with `EINVAL`), so the lock is only ever given back by
//! its holder. Inline bytes are copied when they are set (the application
//! may reuse its buffer at once); the pointers of scatter/gather elements
//! are the application's, checked against its registrations when posted.
//! No panic crosses into C.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::qp::{MAX_INLINE_DATA, MAX_SGE};
use crate::sys::*;

/// The operations `ibv_create_qp_ex` may ask for, by queue pair type.
pub fn send_ops(qp_type: ibv_qp_type) -> u64 {
    let rc_uc = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM | IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM;
    (match qp_type {
        IBV_QPT_RC => rc_uc | IBV_QP_EX_WITH_RDMA_READ | IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD,
        IBV_QPT_UC => rc_uc,
        IBV_QPT_UD => IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM,
        _ => 0,
    }) as u64
}

/// An application's queue pair: the C struct first (`ibv_qp_ex`, whose own
/// first field is the `ibv_qp`), then the batch being built.
#[repr(C)]
pub struct QpBox {
    pub ibv: ibv_qp_ex,
    batch: Batch,
}

impl QpBox {
    /// A queue pair whose `ibv_qp_ex` offers the `ibv_wr_*` calls.
    pub fn new(qp: ibv_qp) -> Box<QpBox> {
        let mut ibv = ibv_qp_ex { qp_base: qp, ..Default::default() };
        ibv.wr_start = Some(wr_start);
        ibv.wr_complete = Some(wr_complete);
        ibv.wr_abort = Some(wr_abort);
        ibv.wr_send = Some(wr_send);
        ibv.wr_send_imm = Some(wr_send_imm);
        ibv.wr_rdma_write = Some(wr_rdma_write);
        ibv.wr_rdma_write_imm = Some(wr_rdma_write_imm);
        ibv.wr_rdma_read = Some(wr_rdma_read);
        ibv.wr_atomic_cmp_swp = Some(wr_atomic_cmp_swp);
        ibv.wr_atomic_fetch_add = Some(wr_atomic_fetch_add);
        ibv.wr_set_sge = Some(wr_set_sge);
        ibv.wr_set_sge_list = Some(wr_set_sge_list);
        ibv.wr_set_inline_data = Some(wr_set_inline_data);
        ibv.wr_set_inline_data_list = Some(wr_set_inline_data_list);
        ibv.wr_set_ud_addr = Some(wr_set_ud_addr);
        ibv.wr_bind_mw = Some(wr_bind_mw);
        ibv.wr_local_inv = Some(wr_local_inv);
        ibv.wr_send_inv = Some(wr_send_inv);
        ibv.wr_send_tso = Some(wr_send_tso);
        ibv.wr_set_xrc_srqn = Some(wr_set_xrc_srqn);
        ibv.wr_atomic_write = Some(wr_atomic_write);
        Box::new(QpBox { ibv, batch: Batch { lock: parking_lot::Mutex::new(Building::default()), owner: AtomicU64::new(0) } })
    }
}

struct Batch {
    /// Held from `ibv_wr_start` to `ibv_wr_complete` or `ibv_wr_abort`.
    lock: parking_lot::Mutex<Building>,
    /// The thread holding it (0: none).
    owner: AtomicU64,
}

#[derive(Default)]
struct Building {
    wrs: Vec<Pending>,
    /// The first error a call found (the batch then posts nothing).
    err: c_int,
}

/// A work request being built: its fields as `ibv_post_send` takes them
/// (no list yet), and its data.
struct Pending {
    wr: ibv_send_wr,
    sges: Vec<ibv_sge>,
    inline: Option<Vec<u8>>,
}

fn this_thread() -> u64 {
    thread_local!(static ID: u64 = unsafe { libc::gettid() } as u64);
    ID.with(|i| *i)
}

/// The batch `qp`'s calling thread is building, if it started one.
///
/// # Safety
/// `qp` is the `ibv_qp_ex` of a live [`QpBox`].
unsafe fn building<'a>(qp: *mut ibv_qp_ex) -> Option<&'a mut Building> {
    let b = &(*(qp as *mut QpBox)).batch;
    // SAFETY: the owner holds the lock (logically, since its wr_start):
    // nobody else touches the data until it gives it back.
    (b.owner.load(Ordering::Acquire) == this_thread()).then(|| &mut *b.lock.data_ptr())
}

/// Runs `f` on the batch of the calling thread, if any; no panic escapes.
unsafe fn with(qp: *mut ibv_qp_ex, f: impl FnOnce(&mut Building)) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Some(b) = building(qp) {
            f(b)
        }
    }));
}

/// A new work request `opcode` with the queue pair's `wr_id` and
/// `wr_flags`, then `set` on it.
unsafe fn add(qp: *mut ibv_qp_ex, opcode: ibv_wr_opcode, set: impl FnOnce(&mut ibv_send_wr)) {
    let (wr_id, flags) = ((*qp).wr_id, (*qp).wr_flags);
    with(qp, |b| {
        let mut wr = ibv_send_wr { wr_id, opcode, send_flags: flags, ..Default::default() };
        set(&mut wr);
        b.wrs.push(Pending { wr, sges: Vec::new(), inline: None });
    });
}

/// Sets what the last work request needs (its data, its destination); a
/// data call without a work request before it fails the batch.
unsafe fn last(qp: *mut ibv_qp_ex, set: impl FnOnce(&mut Pending) -> c_int) {
    with(qp, |b| {
        let err = match b.wrs.last_mut() {
            Some(p) => set(p),
            None => libc::EINVAL,
        };
        if b.err == 0 {
            b.err = err;
        }
    });
}

/// An operation ff0 does not do: the batch fails with EOPNOTSUPP.
unsafe fn unsupported(qp: *mut ibv_qp_ex) {
    with(qp, |b| {
        if b.err == 0 {
            b.err = libc::EOPNOTSUPP;
        }
    });
}

unsafe extern "C" fn wr_start(qp: *mut ibv_qp_ex) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let b = &(*(qp as *mut QpBox)).batch;
        let me = this_thread();
        if b.owner.load(Ordering::Acquire) != me {
            std::mem::forget(b.lock.lock());
            b.owner.store(me, Ordering::Release);
        }
        // (A second start from the holder begins its batch anew.)
        *b.lock.data_ptr() = Building::default();
    }));
}

/// Gives the batch lock back (the caller is its holder).
unsafe fn give_back(qp: *mut ibv_qp_ex) {
    let b = &(*(qp as *mut QpBox)).batch;
    *b.lock.data_ptr() = Building::default();
    b.owner.store(0, Ordering::Release);
    // SAFETY: held by this thread since its wr_start (checked by the
    // caller through `building`).
    b.lock.force_unlock();
}

unsafe extern "C" fn wr_complete(qp: *mut ibv_qp_ex) -> c_int {
    let Some(b) = building(qp) else { return libc::EINVAL };
    let err = catch_unwind(AssertUnwindSafe(|| if b.err != 0 { b.err } else { post(qp, &mut b.wrs) })).unwrap_or(libc::EIO);
    give_back(qp);
    err
}

/// Posts the batch `wrs` whole (or nothing): 0 or the error number.
unsafe fn post(qp: *mut ibv_qp_ex, wrs: &mut [Pending]) -> c_int {
    if wrs.is_empty() {
        return 0;
    }
    for p in wrs.iter_mut() {
        if let Some(d) = &p.inline {
            p.sges = vec![ibv_sge { addr: d.as_ptr() as u64, length: d.len() as u32, lkey: 0 }];
            p.wr.send_flags |= IBV_SEND_INLINE;
        }
        p.wr.num_sge = p.sges.len() as c_int;
        p.wr.sg_list = if p.sges.is_empty() { std::ptr::null_mut() } else { p.sges.as_mut_ptr() };
        p.wr.next = std::ptr::null_mut();
    }
    // Linked back to front: each request points at the next one's place.
    for i in (1..wrs.len()).rev() {
        let next: *mut ibv_send_wr = &mut wrs[i].wr;
        wrs[i - 1].wr.next = next;
    }
    let mut bad = std::ptr::null_mut();
    crate::abi::post_list(qp as *mut ibv_qp, &mut wrs[0].wr, &mut bad, true)
}

unsafe extern "C" fn wr_abort(qp: *mut ibv_qp_ex) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if building(qp).is_some() {
            give_back(qp);
        }
    }));
}

unsafe extern "C" fn wr_send(qp: *mut ibv_qp_ex) {
    add(qp, IBV_WR_SEND, |_| {});
}

unsafe extern "C" fn wr_send_imm(qp: *mut ibv_qp_ex, imm: __be32) {
    add(qp, IBV_WR_SEND_WITH_IMM, |w| w.__bindgen_anon_1.imm_data = imm);
}

fn rdma(rkey: u32, remote_addr: u64) -> ibv_send_wr__bindgen_ty_2 {
    ibv_send_wr__bindgen_ty_2 { rdma: ibv_send_wr__bindgen_ty_2__bindgen_ty_1 { remote_addr, rkey } }
}

unsafe extern "C" fn wr_rdma_write(qp: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    add(qp, IBV_WR_RDMA_WRITE, |w| w.wr = rdma(rkey, addr));
}

unsafe extern "C" fn wr_rdma_write_imm(qp: *mut ibv_qp_ex, rkey: u32, addr: u64, imm: __be32) {
    add(qp, IBV_WR_RDMA_WRITE_WITH_IMM, |w| {
        w.wr = rdma(rkey, addr);
        w.__bindgen_anon_1.imm_data = imm;
    });
}

unsafe extern "C" fn wr_rdma_read(qp: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    add(qp, IBV_WR_RDMA_READ, |w| w.wr = rdma(rkey, addr));
}

fn atomic(rkey: u32, remote_addr: u64, compare_add: u64, swap: u64) -> ibv_send_wr__bindgen_ty_2 {
    ibv_send_wr__bindgen_ty_2 { atomic: ibv_send_wr__bindgen_ty_2__bindgen_ty_2 { remote_addr, compare_add, swap, rkey } }
}

unsafe extern "C" fn wr_atomic_cmp_swp(qp: *mut ibv_qp_ex, rkey: u32, addr: u64, compare: u64, swap: u64) {
    add(qp, IBV_WR_ATOMIC_CMP_AND_SWP, |w| w.wr = atomic(rkey, addr, compare, swap));
}

unsafe extern "C" fn wr_atomic_fetch_add(qp: *mut ibv_qp_ex, rkey: u32, addr: u64, add_: u64) {
    add(qp, IBV_WR_ATOMIC_FETCH_AND_ADD, |w| w.wr = atomic(rkey, addr, add_, 0));
}

unsafe extern "C" fn wr_set_sge(qp: *mut ibv_qp_ex, lkey: u32, addr: u64, length: u32) {
    last(qp, |p| {
        p.sges = vec![ibv_sge { addr, length, lkey }];
        p.inline = None;
        0
    });
}

unsafe extern "C" fn wr_set_sge_list(qp: *mut ibv_qp_ex, n: usize, list: *const ibv_sge) {
    last(qp, |p| {
        if n > MAX_SGE as usize || (n > 0 && list.is_null()) {
            return libc::EINVAL;
        }
        p.sges = if n == 0 { Vec::new() } else { std::slice::from_raw_parts(list, n).to_vec() };
        p.inline = None;
        0
    });
}

/// Inline bytes: copied now, at most [`MAX_INLINE_DATA`] in all.
unsafe fn set_inline(qp: *mut ibv_qp_ex, bufs: &[ibv_data_buf]) {
    last(qp, |p| {
        let total = bufs.iter().try_fold(0usize, |t, b| t.checked_add(b.length));
        if total.is_none_or(|t| t > MAX_INLINE_DATA as usize) || bufs.iter().any(|b| b.addr.is_null() && b.length > 0) {
            return libc::EINVAL;
        }
        let mut d = Vec::with_capacity(total.unwrap_or(0));
        for b in bufs.iter().filter(|b| b.length > 0) {
            d.extend_from_slice(std::slice::from_raw_parts(b.addr as *const u8, b.length));
        }
        p.inline = Some(d);
        p.sges.clear();
        0
    });
}

unsafe extern "C" fn wr_set_inline_data(qp: *mut ibv_qp_ex, addr: *mut c_void, length: usize) {
    set_inline(qp, &[ibv_data_buf { addr, length }]);
}

unsafe extern "C" fn wr_set_inline_data_list(qp: *mut ibv_qp_ex, n: usize, list: *const ibv_data_buf) {
    if n > MAX_INLINE_DATA as usize || (n > 0 && list.is_null()) {
        return last(qp, |_| libc::EINVAL);
    }
    set_inline(qp, if n == 0 { &[] } else { std::slice::from_raw_parts(list, n) });
}

unsafe extern "C" fn wr_set_ud_addr(qp: *mut ibv_qp_ex, ah: *mut ibv_ah, remote_qpn: u32, remote_qkey: u32) {
    last(qp, |p| {
        p.wr.wr = ibv_send_wr__bindgen_ty_2 { ud: ibv_send_wr__bindgen_ty_2__bindgen_ty_3 { ah, remote_qpn, remote_qkey } };
        0
    });
}

unsafe extern "C" fn wr_bind_mw(qp: *mut ibv_qp_ex, _mw: *mut ibv_mw, _rkey: u32, _info: *const ibv_mw_bind_info) {
    unsupported(qp);
}

unsafe extern "C" fn wr_local_inv(qp: *mut ibv_qp_ex, _rkey: u32) {
    unsupported(qp);
}

unsafe extern "C" fn wr_send_inv(qp: *mut ibv_qp_ex, _rkey: u32) {
    unsupported(qp);
}

unsafe extern "C" fn wr_send_tso(qp: *mut ibv_qp_ex, _hdr: *mut c_void, _hdr_sz: u16, _mss: u16) {
    unsupported(qp);
}

unsafe extern "C" fn wr_set_xrc_srqn(qp: *mut ibv_qp_ex, _srqn: u32) {
    unsupported(qp);
}

unsafe extern "C" fn wr_atomic_write(qp: *mut ibv_qp_ex, _rkey: u32, _addr: u64, _wr: *const c_void) {
    unsupported(qp);
}
