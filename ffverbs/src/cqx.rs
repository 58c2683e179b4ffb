//! The extended completion queue (`ibv_create_cq_ex`, and its polling:
//! `ibv_start_poll`, `ibv_next_poll`, `ibv_end_poll` and the
//! `ibv_wc_read_*` calls), which newer verbs programs use instead of
//! `ibv_poll_cq`. Every completion queue ff0 makes is an `ibv_cq_ex` (its
//! first fields are the `ibv_cq`, as in libibverbs), so both ways of
//! polling work on any of them; `ibv_create_cq_ex` offers the standard
//! fields (`IBV_WC_STANDARD_FLAGS`) and refuses timestamps, VLAN, flow tags
//! and tag matching, and parent domains, with `EOPNOTSUPP`. It takes
//! `IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN` (ff0's queues never overrun: they
//! hold every completion of the work requests their queue pairs accept)
//! and `IBV_CREATE_CQ_ATTR_SINGLE_THREADED`.
//!
//! Invariants (unsafe: the C boundary): the application's `ibv_cq_ex` is
//! the first field of our [`CqBox`], so its pointer is the box's; the
//! completion being read is the box's `current`, written by
//! `start_poll`/`next_poll` (the application polls a queue from one thread
//! at a time between `ibv_start_poll` and `ibv_end_poll`, as with a NIC's
//! provider, which holds the queue's lock meanwhile). No panic crosses
//! into C.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::dev::Cq;
use crate::sys::*;

/// What `ibv_create_cq_ex` offers and takes.
pub const WC_FLAGS: u64 = IBV_WC_STANDARD_FLAGS as u64;
pub const CREATE_FLAGS: u32 = IBV_CREATE_CQ_ATTR_SINGLE_THREADED | IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN;

/// An application's completion queue: the C struct first, then ours.
#[repr(C)]
pub struct CqBox {
    pub ibv: ibv_cq_ex,
    pub cq: Arc<Cq>,
    /// The completion `ibv_wc_read_*` read (the last one polled).
    current: Mutex<ibv_wc>,
}

impl CqBox {
    /// A completion queue whose `ibv_cq_ex` part has the extended polling.
    pub fn new(ibv: ibv_cq_ex, cq: Arc<Cq>) -> Box<CqBox> {
        let mut ibv = ibv;
        ibv.start_poll = Some(start_poll);
        ibv.next_poll = Some(next_poll);
        ibv.end_poll = Some(end_poll);
        ibv.read_opcode = Some(read_opcode);
        ibv.read_vendor_err = Some(read_vendor_err);
        ibv.read_byte_len = Some(read_byte_len);
        ibv.read_imm_data = Some(read_imm_data);
        ibv.read_qp_num = Some(read_qp_num);
        ibv.read_src_qp = Some(read_src_qp);
        ibv.read_wc_flags = Some(read_wc_flags);
        ibv.read_slid = Some(read_slid);
        ibv.read_sl = Some(read_sl);
        ibv.read_dlid_path_bits = Some(read_dlid_path_bits);
        Box::new(CqBox { ibv, cq, current: Mutex::new(ibv_wc::default()) })
    }
}

/// # Safety
/// `cq` is the `ibv_cq_ex` of a live [`CqBox`].
unsafe fn boxed<'a>(cq: *mut ibv_cq_ex) -> &'a CqBox {
    unsafe { &*(cq as *const CqBox) }
}

/// Takes the next completion, if any, as the current one: 0, or ENOENT.
unsafe fn take(cq: *mut ibv_cq_ex) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        let mut wc = [ibv_wc::default()];
        // SAFETY: the caller's; the ibv_cq is the ibv_cq_ex's first part.
        if unsafe { crate::abi::poll_some(cq as *mut ibv_cq, &mut wc) } == 0 {
            return libc::ENOENT;
        }
        let b = unsafe { boxed(cq) };
        *b.current.lock().unwrap_or_else(|e| e.into_inner()) = wc[0];
        // SAFETY: the application's struct, which it reads after this call.
        unsafe {
            (*cq).status = wc[0].status;
            (*cq).wr_id = wc[0].wr_id;
        }
        0
    }))
    .unwrap_or(libc::EIO)
}

unsafe extern "C" fn start_poll(cq: *mut ibv_cq_ex, attr: *mut ibv_poll_cq_attr) -> i32 {
    if attr.is_null() || unsafe { (*attr).comp_mask } != 0 {
        return libc::EINVAL;
    }
    unsafe { take(cq) }
}

unsafe extern "C" fn next_poll(cq: *mut ibv_cq_ex) -> i32 {
    unsafe { take(cq) }
}

unsafe extern "C" fn end_poll(_cq: *mut ibv_cq_ex) {}

/// The current completion (a copy).
unsafe fn cur(cq: *mut ibv_cq_ex) -> ibv_wc {
    unsafe { *boxed(cq).current.lock().unwrap_or_else(|e| e.into_inner()) }
}

unsafe extern "C" fn read_opcode(cq: *mut ibv_cq_ex) -> ibv_wc_opcode {
    unsafe { cur(cq).opcode }
}
unsafe extern "C" fn read_vendor_err(cq: *mut ibv_cq_ex) -> u32 {
    unsafe { cur(cq).vendor_err }
}
unsafe extern "C" fn read_byte_len(cq: *mut ibv_cq_ex) -> u32 {
    unsafe { cur(cq).byte_len }
}
unsafe extern "C" fn read_imm_data(cq: *mut ibv_cq_ex) -> __be32 {
    unsafe { cur(cq).__bindgen_anon_1.imm_data }
}
unsafe extern "C" fn read_qp_num(cq: *mut ibv_cq_ex) -> u32 {
    unsafe { cur(cq).qp_num }
}
unsafe extern "C" fn read_src_qp(cq: *mut ibv_cq_ex) -> u32 {
    unsafe { cur(cq).src_qp }
}
unsafe extern "C" fn read_wc_flags(cq: *mut ibv_cq_ex) -> std::ffi::c_uint {
    unsafe { cur(cq).wc_flags }
}
unsafe extern "C" fn read_slid(cq: *mut ibv_cq_ex) -> u32 {
    unsafe { cur(cq).slid as u32 }
}
unsafe extern "C" fn read_sl(cq: *mut ibv_cq_ex) -> u8 {
    unsafe { cur(cq).sl }
}
unsafe extern "C" fn read_dlid_path_bits(cq: *mut ibv_cq_ex) -> u8 {
    unsafe { cur(cq).dlid_path_bits }
}
