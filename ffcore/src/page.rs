//! The client page: a small sealed memfd the router shares with each client
//! at `Hello`, through which it signals events without a round trip.
//!
//! ```text
//! 0    magic
//! 64   accept_seq: bumped by the router whenever a connection is queued on
//!      any of this client's listeners
//! 128  credit: total payload bytes this client may send (router writes;
//!      u64::MAX = no rate limit)
//! 192  sent: payload bytes this client has sent (client writes)
//! 256  want: non-zero while the client waits for credit (client writes)
//! ```
//!
//! A client that scribbles on its own page only confuses itself: the router
//! only reads `sent` and `want`, and only to decide how much credit to add,
//! which never exceeds the rate limit whatever they say.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::shm::SharedMem;

pub const PAGE_LEN: usize = 4096;
/// Bumped whenever the layout changes, so mismatched builds fail at Hello
/// instead of misreading each other (e.g. a credit of 0 that never grows).
const MAGIC: u64 = u64::from_le_bytes(*b"FFPAGE02");

/// A mapped client page.
pub struct Page {
    mem: SharedMem,
}

impl Page {
    /// Router side: a fresh page.
    pub fn create() -> Result<Page> {
        let mem = SharedMem::create("ff-client-page", PAGE_LEN)?;
        // SAFETY: offset 0 is inside the fresh, page-aligned mapping.
        unsafe { (mem.as_ptr() as *mut u64).write(MAGIC) };
        let p = Page { mem };
        p.set_credit(u64::MAX);
        Ok(p)
    }

    /// Client side: a page received with `Welcome`.
    pub fn open(mem: SharedMem) -> Result<Page> {
        let p = Page { mem };
        // SAFETY: as above; read through an atomic (shared memory).
        let magic = unsafe { &*(p.mem.as_ptr() as *const AtomicU64) }.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(Error::protocol("the router speaks another client-page layout (mismatched FreeFlow builds: update the router or the client)"));
        }
        Ok(p)
    }

    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }

    fn accept_word(&self) -> &AtomicU64 {
        // SAFETY: offset 64 is 8-aligned and inside the PAGE_LEN mapping,
        // which lives as long as self; atomics tolerate concurrent writers.
        unsafe { &*(self.mem.as_ptr().add(64) as *const AtomicU64) }
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: every offset used is 8-aligned and below PAGE_LEN; the
        // mapping lives as long as self; atomics tolerate concurrent writers.
        unsafe { &*(self.mem.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Total bytes this client may have sent (u64::MAX: unlimited).
    pub fn credit(&self) -> u64 {
        self.word(128).load(Ordering::Acquire)
    }

    /// Router side: sets the credit.
    pub fn set_credit(&self, v: u64) {
        self.word(128).store(v, Ordering::Release);
    }

    pub fn sent(&self) -> u64 {
        self.word(192).load(Ordering::Acquire)
    }

    /// Client side: account `n` more bytes sent.
    pub fn add_sent(&self, n: u64) {
        self.word(192).fetch_add(n, Ordering::AcqRel);
    }

    pub fn wants_credit(&self) -> bool {
        self.word(256).load(Ordering::Acquire) != 0
    }

    pub fn set_want(&self, w: bool) {
        self.word(256).store(w as u64, Ordering::Release);
    }

    /// Client side: how many bytes may be sent now (u64::MAX: unlimited).
    pub fn allowance(&self) -> u64 {
        match self.credit() {
            u64::MAX => u64::MAX,
            c => c.saturating_sub(self.sent()),
        }
    }

    pub fn accept_seq(&self) -> u64 {
        self.accept_word().load(Ordering::Acquire)
    }

    /// Router side: a connection was queued for this client. Wakes a
    /// client that sleeps on the counter ([`Page::accept_wake_word`]).
    pub fn bump_accept(&self) {
        self.accept_word().fetch_add(1, Ordering::Release);
        crate::futex::wake_all(self.accept_wake_word());
    }

    /// The half of the accept counter that changes with every bump (a
    /// futex is 32 bits): what a sleeping client waits on.
    pub fn accept_wake_word(&self) -> &std::sync::atomic::AtomicU32 {
        let low = if cfg!(target_endian = "little") { 64 } else { 68 };
        // SAFETY: inside the page, 4-aligned; atomics tolerate concurrent writers.
        unsafe { &*(self.mem.as_ptr().add(low) as *const std::sync::atomic::AtomicU32) }
    }
}
