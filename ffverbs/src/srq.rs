//! Shared receive queues. An SRQ holds receives that any queue pair
//! created with it takes: the first request that needs a receive (a SEND,
//! a WRITE with immediate) on any of them takes the oldest one, and its
//! completion goes to that queue pair's receive CQ with that queue pair's
//! number, as on a NIC. A queue pair that finds the SRQ empty holds the
//! request (an infinite RNR retry, see [`crate::qp`]) until a receive is
//! posted to the SRQ. A queue pair that fails does not flush the SRQ (its
//! receives belong to the other queue pairs as much).
//!
//! The queue is only touched under the device's engine lock (every queue
//! pair lives there); its own mutex makes that a type-level fact rather
//! than a convention and is never contended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::dev::Device;
use crate::qp::{RecvWr, MAX_SGE};
use crate::sys::*;

/// The most receives one SRQ holds (`max_srq_wr`).
pub const MAX_SRQ_WR: u32 = 32768;
/// The most SRQs one device context has (`max_srq`): a per-client cap.
pub const MAX_SRQ: usize = 1024;

pub struct SrqState {
    pub rq: VecDeque<RecvWr>,
    pub max_wr: u32,
    pub max_sge: u32,
    /// `IBV_EVENT_SRQ_LIMIT_REACHED` is raised once when fewer receives
    /// than this are left (0: disarmed, as after it fired).
    pub limit: u32,
}

pub struct Srq {
    /// The protection domain its receives' memory must be registered in.
    pub pd: usize,
    pub state: Mutex<SrqState>,
    /// The `ibv_srq` the application holds (for its asynchronous event).
    pub ibv: AtomicU64,
}

/// Why a receive was refused when posted (an errno).
pub type Errno = i32;

impl Srq {
    /// An SRQ for `max_wr` receives of up to `max_sge` elements each
    /// (0 means 1), armed at `limit`; EINVAL outside the device's limits.
    pub fn new(pd: usize, max_wr: u32, max_sge: u32, limit: u32) -> Result<Srq, Errno> {
        if max_wr == 0 || max_wr > MAX_SRQ_WR || max_sge > MAX_SGE || limit > max_wr {
            return Err(libc::EINVAL);
        }
        let state = SrqState { rq: VecDeque::new(), max_wr, max_sge: max_sge.max(1), limit };
        Ok(Srq { pd, state: Mutex::new(state), ibv: AtomicU64::new(0) })
    }

    /// Posts one receive: EINVAL for too many elements or memory that is
    /// not registered in the SRQ's protection domain for local writes,
    /// ENOMEM when `max_wr` receives are queued.
    pub fn post(&self, dev: &Device, wr: RecvWr) -> Result<(), Errno> {
        let mut s = self.state.lock().unwrap();
        if wr.sges.len() > s.max_sge as usize {
            return Err(libc::EINVAL);
        }
        if s.rq.len() >= s.max_wr as usize {
            return Err(libc::ENOMEM);
        }
        for e in &wr.sges {
            if dev.check_local(self.pd, e.lkey, e.addr, e.len as u64, true).is_err() {
                return Err(libc::EINVAL);
            }
        }
        s.rq.push_back(wr);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().unwrap().rq.is_empty()
    }

    /// The oldest receive, for a queue pair that needs one; raises the
    /// limit event if this takes the queue below its armed limit.
    pub fn take(&self, dev: &Device) -> Option<RecvWr> {
        let mut s = self.state.lock().unwrap();
        let r = s.rq.pop_front()?;
        if s.limit > 0 && (s.rq.len() as u32) < s.limit {
            s.limit = 0;
            dev.async_event(IBV_EVENT_SRQ_LIMIT_REACHED, self.ibv.load(Ordering::Relaxed));
        }
        Some(r)
    }

    /// `ibv_modify_srq`: a new `max_wr` (not below what is queued, within
    /// the device's limit) and/or arms the limit (not above `max_wr`).
    pub fn modify(&self, mask: u32, max_wr: u32, limit: u32) -> Result<(), Errno> {
        let mut s = self.state.lock().unwrap();
        if mask & !(IBV_SRQ_MAX_WR | IBV_SRQ_LIMIT) != 0 {
            return Err(libc::EINVAL);
        }
        let new_max = if mask & IBV_SRQ_MAX_WR != 0 { max_wr } else { s.max_wr };
        let new_limit = if mask & IBV_SRQ_LIMIT != 0 { limit } else { s.limit };
        if new_max == 0 || new_max > MAX_SRQ_WR || (new_max as usize) < s.rq.len() || new_limit > new_max {
            return Err(libc::EINVAL);
        }
        s.max_wr = new_max;
        s.limit = new_limit;
        Ok(())
    }

    /// (max_wr, max_sge, limit)
    pub fn attr(&self) -> (u32, u32, u32) {
        let s = self.state.lock().unwrap();
        (s.max_wr, s.max_sge, s.limit)
    }
}
