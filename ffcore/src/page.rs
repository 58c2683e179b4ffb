//! The client page: a small sealed memfd the router shares with each client
//! at `Hello`, through which it signals events without a round trip.
//!
//! ```text
//! 0    magic
//! 64   accept_seq: bumped by the router whenever a connection is queued on
//!      any of this client's listeners
//! ```
//!
//! Only the router writes it; a client that scribbles on its own page only
//! confuses itself (the router never reads it).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::shm::SharedMem;

pub const PAGE_LEN: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"FFPAGE01");

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
        Ok(Page { mem })
    }

    /// Client side: a page received with `Welcome`.
    pub fn open(mem: SharedMem) -> Result<Page> {
        let p = Page { mem };
        // SAFETY: as above; read through an atomic (shared memory).
        let magic = unsafe { &*(p.mem.as_ptr() as *const AtomicU64) }.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(Error::protocol("bad client page"));
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

    pub fn accept_seq(&self) -> u64 {
        self.accept_word().load(Ordering::Acquire)
    }

    /// Router side: a connection was queued for this client.
    pub fn bump_accept(&self) {
        self.accept_word().fetch_add(1, Ordering::Release);
    }
}
