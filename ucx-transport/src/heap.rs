//! Large heap allocations as shadow memory (`UCX_FF_HEAP`, 1 MiB and up by
//! default; `inf` turns it off).
//!
//! UCP registers the application's buffers (Open MPI's are `malloc`'s) for
//! every rendezvous message. Such memory is not shadow memory, and moving
//! its pages there in place is unsafe under UCX's registration cache (see
//! [`crate::md`]), so PUT and GET on it cost a copy in each rank. This
//! module makes it shadow memory from birth instead: `libuct_ff.so`, which
//! is preloaded, exports the `malloc` family, and once a memory domain
//! attached to a router has opened ([`attach`]), an allocation of at least
//! `UCX_FF_HEAP` bytes is a region of its own from the router
//! ([`ffcore::Region`]): its pages hold nothing else, so nothing is ever
//! moved under anyone. Sends from it and receives into it then take
//! ffcore's shadow paths (one copy on a host; buffer to wire between
//! hosts) whether or not UCX registered them.
//!
//! Everything else goes to glibc (`__libc_malloc` and friends): smaller
//! allocations, any allocation while this thread is already in here (the
//! heap's own bookkeeping allocates), any made before a domain attached or
//! after it closed, and any the router refuses (its quota) or beyond the
//! heap's own caps (`UCX_FF_HEAP_MAX` bytes, [`MAX_REGIONS`] regions: each
//! costs the process a file descriptor).
//!
//! - **Which pointers are ours**: regions start on a page boundary, so a
//!   pointer that is not page aligned is glibc's without a look at the
//!   table; others are looked up under the heap's lock.
//! - **Alignment** up to [`MAX_ALIGN`] (2 MiB: UCX allocates its buffers
//!   as transparent huge pages, `posix_memalign` at 2 MiB): the region is
//!   larger by the alignment less a page and the pointer aligned inside.
//! - **Reuse**: sizes are rounded up to a class (at most 25 % more), and
//!   freed regions are kept (at most [`CACHE`] of them, [`CACHE_BYTES`]
//!   in all) for the next allocation of their class: a router round trip and fresh pages cost
//!   more than glibc's recycled heap, and an application (Open MPI's
//!   collectives) allocates the same sizes again and again. Kept regions
//!   stay registered in UCX's cache, which stays right: the memory is the
//!   same. A region given back unmaps through libc, so UCX's memory hooks
//!   see it and drop registrations inside it.
//! - **`fork()`**: the region is a shared mapping, which a child would
//!   share with the parent. The child handler ([`child_after_fork`])
//!   remaps every region `MAP_PRIVATE` from its file at the same address:
//!   the child keeps the contents and its writes stay its own (it still
//!   sees the parent's later writes to pages it has not written, unlike
//!   `malloc` memory), and the child's heap hands out nothing more and
//!   never talks to the parent's router attachment.
//!
//! Locking: one spin lock, held only for table updates (never across a
//! router round trip or an unmap), so that the `fork` handlers can hold
//! it across `fork()`. Whatever a thread frees while it holds the lock is
//! the table's own memory, so it goes straight to glibc (`HOLDING`), and
//! so does whatever it allocates inside the heap (`BUSY`).

use std::cell::Cell;
use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

extern "C" {
    fn __libc_malloc(n: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_calloc(n: usize, m: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, n: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, n: usize) -> *mut c_void;
}

/// Freed regions kept for reuse, at most, and their bytes at most (freed
/// memory beyond that goes back to the system, as glibc's large chunks do).
pub const CACHE: usize = 8;
pub const CACHE_BYTES: usize = 256 << 20;

/// Regions (live and kept) at most: each holds a file descriptor of the
/// process, and the application needs its own (a soft limit of 1024 is
/// common).
pub const MAX_REGIONS: usize = 128;

/// Allocations of at least this many bytes are ours; `usize::MAX` while no
/// domain is attached.
static MIN: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Allocations of ours not freed yet (free's fast path when none).
static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread is inside the heap: new allocations go to glibc.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// This thread holds the heap's lock: whatever it frees meanwhile is
    /// the table's own memory (glibc's), never one of ours.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

struct Heap {
    /// Who attached it (a memory domain's address) and how it makes
    /// regions; None: hands out nothing new (detached, or a forked child).
    maker: Option<(usize, ffcore::RegionMaker)>,
    /// Cap on the bytes of live and kept regions.
    max: usize,
    bytes: usize,
    /// Live allocations by address: the region and the size asked for.
    live: HashMap<usize, (ffcore::Region, usize)>,
    /// Freed regions, oldest first.
    kept: Vec<ffcore::Region>,
    /// In a forked child: regions are the child's private copies.
    forked: bool,
}

/// A spin lock the `fork` handlers can hold across `fork()` (a std
/// `Mutex` guard cannot be left held from one handler to the next).
struct Lock {
    held: AtomicBool,
    heap: std::cell::UnsafeCell<Option<Heap>>,
}

// SAFETY: `heap` is only reached through `with`, or between `acquire` and
// `release`, which hold `held`.
unsafe impl Sync for Lock {}

static HEAP: Lock = Lock { held: AtomicBool::new(false), heap: std::cell::UnsafeCell::new(None) };

impl Lock {
    fn acquire(&self) {
        while self.held.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::thread::yield_now();
        }
    }
    fn release(&self) {
        self.held.store(false, Ordering::Release);
    }
    /// Runs `f` on the heap under the lock. `f` must not unmap or make a
    /// router round trip (do those after, on what it returns).
    fn with<R>(&self, f: impl FnOnce(&mut Option<Heap>) -> R) -> R {
        self.acquire();
        HOLDING.with(|h| h.set(true));
        // SAFETY: we hold the lock.
        let r = f(unsafe { &mut *self.heap.get() });
        HOLDING.with(|h| h.set(false));
        self.release();
        r
    }
}

/// Runs `f` with this thread marked busy in the heap (nested allocations
/// go to glibc); None if it already was.
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    if BUSY.with(|b| b.get()) {
        return None;
    }
    Some(marked(f))
}

/// Runs `f` with this thread marked busy, whether or not it already was
/// (freeing one of ours must work from anywhere).
fn marked<R>(f: impl FnOnce() -> R) -> R {
    let was = BUSY.with(|b| b.replace(true));
    let r = f();
    BUSY.with(|b| b.set(was));
    r
}

fn page() -> usize {
    ffcore::shadow::page_size()
}

/// The size class of an allocation of `n` bytes: rounded up to a page and
/// to a quarter of its power of two.
pub fn class(n: usize) -> usize {
    let p = page();
    let step = ((usize::BITS - 1 - n.max(1).leading_zeros()).saturating_sub(2)).min(usize::BITS - 2);
    let step = (1usize << step).max(p);
    n.div_ceil(step).saturating_mul(step)
}

/// Serves allocations of at least `min` bytes from regions `maker` makes,
/// up to `max` bytes of them, unless a domain is attached already.
pub fn attach(owner: usize, maker: ffcore::RegionMaker, min: usize, max: usize) {
    static FORK: Once = Once::new();
    guarded(|| {
        let attached = HEAP.with(|h| {
            let h = h.get_or_insert_with(|| Heap { maker: None, max, bytes: 0, live: HashMap::new(), kept: Vec::new(), forked: false });
            if h.maker.is_some() || h.forked {
                return false;
            }
            h.maker = Some((owner, maker));
            h.max = max;
            true
        });
        if attached {
            FORK.call_once(|| {
                // SAFETY: registering plain functions.
                let r = unsafe { libc::pthread_atfork(Some(before_fork), Some(parent_after_fork), Some(child_after_fork)) };
                if r != 0 {
                    ff_diag!("ff: pthread_atfork: error {r}");
                }
            });
            MIN.store(min.max(page()), Ordering::Release);
            ff_debug!("ff: allocations of {min} bytes and more are shadow memory (up to {max} bytes)");
        }
    });
}

/// Stops serving allocations if `owner` attached the heap, and gives the
/// kept regions back. Live ones stay valid until freed.
pub fn detach(owner: usize) {
    marked(|| {
        let kept = HEAP.with(|h| match h {
            Some(h) if h.maker.as_ref().is_some_and(|(o, _)| *o == owner) => {
                MIN.store(usize::MAX, Ordering::Release);
                h.maker = None;
                h.bytes -= h.kept.iter().map(|r| r.len()).sum::<usize>();
                std::mem::take(&mut h.kept)
            }
            _ => Vec::new(),
        });
        drop(kept);
    });
}

/// Largest alignment served from regions (UCX's transparent huge pages ask
/// for 2 MiB): the region is made larger by the alignment less a page, and
/// the pointer is aligned inside it.
pub const MAX_ALIGN: usize = 2 << 20;

/// `n` bytes at an `align`-aligned address (`align` a power of two, at
/// most [`MAX_ALIGN`]) in a region, or None (glibc's turn). `zero`: they
/// must read zero.
fn alloc(n: usize, zero: bool, align: usize) -> Option<*mut u8> {
    if n < MIN.load(Ordering::Acquire) || align > MAX_ALIGN {
        return None;
    }
    guarded(|| {
        let want = class(n + align.saturating_sub(page()));
        // A kept region of the class, or room and a maker for a new one.
        let got = HEAP.with(|h| {
            let h = h.as_mut()?;
            let (_, maker) = h.maker.as_ref()?;
            if let Some(i) = h.kept.iter().rposition(|r| r.len() == want) {
                let r = h.kept.swap_remove(i);
                return Some(Ok(r));
            }
            let mut evict = Vec::new();
            while h.bytes + want > h.max && !h.kept.is_empty() {
                let r = h.kept.remove(0);
                h.bytes -= r.len();
                evict.push(r);
            }
            if h.bytes + want > h.max || h.live.len() + h.kept.len() >= MAX_REGIONS {
                return None;
            }
            h.bytes += want;
            Some(Err((maker.clone(), evict)))
        })?;
        let (r, fresh) = match got {
            Ok(r) => (r, false),
            Err((maker, evict)) => {
                drop(evict);
                match maker.alloc(want) {
                    Ok(r) => {
                        ff_debug!("ff: a {n}-byte allocation is a new {want}-byte shadow region");
                        (r, true)
                    }
                    Err(e) => {
                        HEAP.with(|h| h.as_mut().map(|h| h.bytes -= want));
                        ff_debug!("ff: no shadow memory for a {n}-byte allocation: {e}");
                        return None;
                    }
                }
            }
        };
        // Regions are page aligned: at most `align - page` bytes skipped.
        let p = (r.as_ptr() as usize).next_multiple_of(align.max(page())) as *mut u8;
        if zero && !fresh {
            // SAFETY: the region's data is `want >= n` writable bytes.
            unsafe { std::ptr::write_bytes(p, 0, n) };
        }
        HEAP.with(|h| h.as_mut().map(|h| h.live.insert(p as usize, (r, n))));
        LIVE.fetch_add(1, Ordering::AcqRel);
        Some(p)
    })
    .flatten()
}

/// An allocation of ours, as [`lookup`] finds it.
struct Found {
    /// Bytes from the pointer to the region's end.
    cap: usize,
    /// The size asked for.
    had: usize,
}

/// What `p` is if it is ours.
fn lookup(p: *mut c_void) -> Option<Found> {
    if !(p as usize).is_multiple_of(page()) || LIVE.load(Ordering::Acquire) == 0 || HOLDING.with(|h| h.get()) {
        return None;
    }
    HEAP.with(|h| {
        let (r, n) = h.as_ref()?.live.get(&(p as usize))?;
        Some(Found { cap: r.as_ptr() as usize + r.len() - p as usize, had: *n })
    })
}

/// Frees `p` if it is ours: true if it was.
fn release(p: *mut c_void) -> bool {
    if !(p as usize).is_multiple_of(page()) || LIVE.load(Ordering::Acquire) == 0 || HOLDING.with(|h| h.get()) {
        return false;
    }
    marked(|| {
        let found = HEAP.with(|h| {
            let h = h.as_mut()?;
            let (r, _) = h.live.remove(&(p as usize))?;
            LIVE.fetch_sub(1, Ordering::AcqRel);
            if h.forked {
                return Some(Freed::Child(r));
            }
            let mut evict = Vec::new();
            if h.maker.is_some() {
                h.kept.push(r);
                while h.kept.len() > CACHE || h.kept.iter().map(|r| r.len()).sum::<usize>() > CACHE_BYTES {
                    let r = h.kept.remove(0);
                    h.bytes -= r.len();
                    evict.push(r);
                }
            } else {
                h.bytes -= r.len();
                evict.push(r);
            }
            Some(Freed::Parent(evict))
        });
        match found {
            None => false,
            Some(Freed::Parent(evict)) => {
                drop(evict);
                true
            }
            Some(Freed::Child(r)) => {
                forget_in_child(r, false);
                true
            }
        }
    })
}

enum Freed {
    /// Regions to give back (unmap, and free at the router).
    Parent(Vec<ffcore::Region>),
    /// A forked child's copy: unmapped here only.
    Child(ffcore::Region),
}

/// Unmaps a region in a forked child without telling the router (the
/// attachment is the parent's). `raw`: by system call, past UCX's memory
/// hooks (in the fork handler, where a lock another parent thread held
/// stays held forever).
fn forget_in_child(r: ffcore::Region, raw: bool) {
    let (base, len, _) = r.mapping();
    std::mem::forget(r);
    // SAFETY: the child's private copy of the region, which nobody else
    // uses: the allocation it backed was just freed (or was kept unused).
    unsafe {
        if raw {
            libc::syscall(libc::SYS_munmap, base as libc::c_long, len as libc::c_long);
        } else {
            libc::munmap(base as *mut c_void, len);
        }
    }
}

extern "C" fn before_fork() {
    HEAP.acquire();
}

extern "C" fn parent_after_fork() {
    HEAP.release();
}

/// In the child: every region becomes a private copy at the same address,
/// kept ones are dropped, and nothing more is handed out. The mapping
/// calls are raw system calls: UCX's memory hooks take locks that another
/// thread of the parent may have held at the fork, and its registration
/// cache needs no word of a mapping replaced by one of the same file.
extern "C" fn child_after_fork() {
    // SAFETY: `before_fork` took the lock in the thread that forked, which
    // is this one.
    let h = unsafe { &mut *HEAP.heap.get() };
    if let Some(h) = h.as_mut() {
        MIN.store(usize::MAX, Ordering::Release);
        h.forked = true;
        if let Some((_, m)) = h.maker.take() {
            std::mem::forget(m);
        }
        for (r, _) in h.live.values() {
            let (base, len, fd) = r.mapping();
            // Every argument as a long: the call is variadic.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as libc::c_long;
            let (prot, flags) = ((libc::PROT_READ | libc::PROT_WRITE) as libc::c_long, (libc::MAP_PRIVATE | libc::MAP_FIXED) as libc::c_long);
            // SAFETY: replaces the child's mapping of the region with a
            // private one of the same file, at the same place and size.
            let q = unsafe { libc::syscall(libc::SYS_mmap, base as libc::c_long, len as libc::c_long, prot, flags, fd, 0 as libc::c_long) };
            if q != base as libc::c_long {
                // Never leave the parent's pages writable here: the child
                // faults on them instead.
                let msg = b"ff: a forked child cannot make its copy of a heap region private; unmapping it\n";
                // SAFETY: a static buffer to stderr; then our own mapping.
                unsafe {
                    libc::write(2, msg.as_ptr() as *const c_void, msg.len());
                    libc::syscall(libc::SYS_munmap, base as libc::c_long, len as libc::c_long);
                }
            }
        }
        for r in std::mem::take(&mut h.kept) {
            forget_in_child(r, true);
        }
    }
    HEAP.release();
}

/// Interposed allocator entry points (exported by the cdylib).
///
/// # Safety
/// These are the C library's functions, with its contracts: pointers
/// passed in come from this family.
#[allow(clippy::missing_safety_doc)] // the C library's contracts, above
pub mod exports {
    use super::*;

    #[no_mangle]
    pub unsafe extern "C" fn malloc(n: usize) -> *mut c_void {
        match alloc(n, false, 1) {
            Some(p) => p as *mut c_void,
            None => __libc_malloc(n),
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn calloc(n: usize, m: usize) -> *mut c_void {
        let Some(total) = n.checked_mul(m) else { return __libc_calloc(n, m) };
        match alloc(total, true, 1) {
            Some(p) => p as *mut c_void,
            None => __libc_calloc(n, m),
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn free(p: *mut c_void) {
        if !p.is_null() && !release(p) {
            __libc_free(p);
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn realloc(p: *mut c_void, n: usize) -> *mut c_void {
        if p.is_null() {
            return malloc(n);
        }
        let Some(Found { cap, had }) = lookup(p) else { return __libc_realloc(p, n) };
        if n == 0 {
            free(p);
            return std::ptr::null_mut();
        }
        // In place while it fits and uses at least half of what is left
        // (an aligned allocation's offset in its region is where mmap put
        // it, so the rule must not depend on it).
        if n <= cap && n >= cap / 2 {
            HEAP.with(|h| h.as_mut().and_then(|h| h.live.get_mut(&(p as usize))).map(|e| e.1 = n));
            return p;
        }
        let q = malloc(n);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, had.min(n));
            free(p);
        }
        q
    }

    #[no_mangle]
    pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, m: usize) -> *mut c_void {
        match n.checked_mul(m) {
            Some(total) => realloc(p, total),
            None => {
                *libc::__errno_location() = libc::ENOMEM;
                std::ptr::null_mut()
            }
        }
    }

    /// `align` a power of two (checked by the callers that must).
    unsafe fn aligned(align: usize, n: usize) -> *mut c_void {
        match alloc(n, false, align) {
            Some(p) => p as *mut c_void,
            None => __libc_memalign(align, n),
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, n: usize) -> c_int {
        if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<*mut c_void>()) {
            return libc::EINVAL;
        }
        let p = aligned(align, n);
        if p.is_null() {
            return libc::ENOMEM;
        }
        *out = p;
        0
    }

    #[no_mangle]
    pub unsafe extern "C" fn aligned_alloc(align: usize, n: usize) -> *mut c_void {
        if !align.is_power_of_two() {
            *libc::__errno_location() = libc::EINVAL;
            return std::ptr::null_mut();
        }
        aligned(align, n)
    }

    #[no_mangle]
    pub unsafe extern "C" fn memalign(align: usize, n: usize) -> *mut c_void {
        // glibc rounds a bad alignment up to a power of two.
        aligned(align.max(1).next_power_of_two(), n)
    }

    #[no_mangle]
    pub unsafe extern "C" fn valloc(n: usize) -> *mut c_void {
        aligned(page(), n)
    }

    #[no_mangle]
    pub unsafe extern "C" fn pvalloc(n: usize) -> *mut c_void {
        aligned(page(), n.div_ceil(page()).max(1) * page())
    }

    #[no_mangle]
    pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
        if p.is_null() {
            return 0;
        }
        if let Some(f) = lookup(p) {
            return f.cap;
        }
        type Usable = unsafe extern "C" fn(*mut c_void) -> usize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut f = NEXT.load(Ordering::Acquire);
        if f == 0 {
            f = libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) as usize;
            NEXT.store(f, Ordering::Release);
        }
        if f == 0 {
            return 0;
        }
        // SAFETY: glibc's malloc_usable_size, found by dlsym.
        std::mem::transmute::<usize, Usable>(f)(p)
    }
}

#[cfg(test)]
mod tests {
    use super::class;

    #[test]
    fn classes_waste_at_most_a_quarter() {
        for n in [1usize << 20, (1 << 20) + 1, 3 << 20, 29_600_000, 14_800_000, (64 << 20) - 1] {
            let c = class(n);
            assert!(c >= n && c - n <= n / 4 + 4096, "{n} -> {c}");
            assert_eq!(c % 4096, 0);
            assert_eq!(class(c), c, "a class is its own class");
        }
    }
}
