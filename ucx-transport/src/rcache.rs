//! The domain's registration cache: UCX's own `ucs_rcache`, as UCX's IB
//! domain uses it. UCP (1.13, the protocols it uses by default) registers
//! a rendezvous buffer for every message and deregisters it after; with
//! shadow memory a registration moves pages, so it must happen once per
//! buffer, not once per message. The cache keeps registrations until UCX's
//! memory hooks report the memory unmapped (`UCM_EVENT_VM_UNMAPPED`: munmap,
//! the heap shrinking, madvise(DONTNEED)), then deregisters them.
//!
//! Invariant: every region the cache holds owns one `Memh` (a `Box` made by
//! the domain, freed by the cache's dereg callback); the `Memh` points back
//! to its region so that `put` can find it.

use crate::md::{Md, Memh};
use crate::sys::*;
use std::os::raw::{c_char, c_void};

/// What the cache allocates per region: its header, then ours.
#[repr(C)]
struct Region {
    super_: ucs_rcache_region_t,
    memh: *mut Memh,
}

pub struct Rcache(*mut ucs_rcache_t);

// SAFETY: ucs_rcache is thread safe (its own locks).
unsafe impl Send for Rcache {}
unsafe impl Sync for Rcache {}

static OPS: ucs_rcache_ops_t = ucs_rcache_ops_t { mem_reg: Some(reg), mem_dereg: Some(dereg), dump_region: Some(dump) };

unsafe extern "C" fn reg(context: *mut c_void, _rc: *mut ucs_rcache_t, _arg: *mut c_void, region: *mut ucs_rcache_region_t, _flags: u16) -> ucs_status_t {
    let md = &*(context as *const Md);
    let r = region as *mut Region;
    let (start, end) = ((*region).super_.start, (*region).super_.end);
    match md.new_memh(start, end - start) {
        Ok(mut h) => {
            h.cached = region;
            (*r).memh = Box::into_raw(h);
            UCS_OK
        }
        Err(s) => s,
    }
}

unsafe extern "C" fn dereg(context: *mut c_void, _rc: *mut ucs_rcache_t, region: *mut ucs_rcache_region_t) {
    let md = &*(context as *const Md);
    let r = region as *mut Region;
    if !(*r).memh.is_null() {
        md.drop_memh(Box::from_raw((*r).memh));
        (*r).memh = std::ptr::null_mut();
    }
}

unsafe extern "C" fn dump(_context: *mut c_void, _rc: *mut ucs_rcache_t, region: *mut ucs_rcache_region_t, buf: *mut c_char, max: usize) {
    let r = region as *mut Region;
    let s = if (*r).memh.is_null() { String::new() } else { format!("ff key {:#x}", (*(*r).memh).key) };
    let n = s.len().min(max.saturating_sub(1));
    if max > 0 {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

impl Rcache {
    /// A cache for `md`.
    ///
    /// # Safety
    /// `md` stays at its address and outlives the cache (the domain drops
    /// the cache first).
    pub unsafe fn new(md: *const Md) -> Result<Rcache, ucs_status_t> {
        let params = ucs_rcache_params_t {
            region_struct_size: std::mem::size_of::<Region>(),
            alignment: 16, // UCS_RCACHE_MIN_ALIGNMENT
            max_alignment: ffcore::shadow::page_size(),
            ucm_events: UCM_EVENT_VM_UNMAPPED as i32,
            ucm_event_priority: 1000,
            ops: &OPS,
            context: md as *mut c_void,
            // Our registrations move pages (shadow memory) and a fork's
            // copy-on-write moves them again: a page-frame check would
            // only report that, fatally (UCX's test_md_fork did).
            flags: UCS_RCACHE_FLAG_NO_PFN_CHECK as _,
            max_regions: std::os::raw::c_ulong::MAX,
            max_size: usize::MAX,
            // Deregister as soon as memory is unmapped (UCX's async thread),
            // not at the next registration: until then a peer's request at
            // the old address would be served from whatever is there now.
            max_unreleased: 0,
        };
        let mut rc = std::ptr::null_mut();
        match ucs_rcache_create(&params, c"ff".as_ptr(), std::ptr::null_mut(), &mut rc) {
            UCS_OK => Ok(Rcache(rc)),
            s => Err(s),
        }
    }

    /// The registration covering `[addr, addr+len)`, made if needed.
    ///
    /// # Safety
    /// `[addr, addr+len)` is memory of this process (what UCX registers).
    pub unsafe fn get(&self, addr: *mut c_void, len: usize) -> Result<*mut Memh, ucs_status_t> {
        let mut region = std::ptr::null_mut();
        match ucs_rcache_get(self.0, addr, len, libc::PROT_READ | libc::PROT_WRITE, std::ptr::null_mut(), &mut region) {
            UCS_OK => Ok((*(region as *mut Region)).memh),
            s => Err(s),
        }
    }

    /// Releases what [`Rcache::get`] returned (the registration stays cached).
    ///
    /// # Safety
    /// `memh` came from [`Rcache::get`] of this cache, once per `get`.
    pub unsafe fn put(&self, memh: &Memh) {
        ucs_rcache_region_put(self.0, memh.cached);
    }
}

impl Drop for Rcache {
    fn drop(&mut self) {
        // SAFETY: made by ucs_rcache_create; deregisters what it still holds.
        unsafe { ucs_rcache_destroy(self.0) };
    }
}
