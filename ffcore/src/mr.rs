//! Registered memory as shadow memory, and peers' access to it.
//!
//! [`register`] moves the whole pages of a registered buffer onto a region
//! the router made (see [`crate::shadow`] for how and the hazards), so a
//! peer of the same tenant on the same host that holds its [`RemoteKey`]
//! maps the very pages the application reads and writes
//! ([`map_remote`]): a transfer between two processes is then one copy,
//! like CMA or xpmem, without ptrace rights and without the router on the
//! data path.
//!
//! A process's shadow segments are disjoint. Registering a range whose
//! whole pages lie inside an existing segment shares that segment (and its
//! key: a peer holding either key can reach the whole segment, as with two
//! overlapping `ibv_reg_mr` the owner chose to hand out); a range that
//! overlaps a segment only in part stays private, and its transfers take
//! the copy path ([`ShadowMr::why_not`] says so).
//!
//! Revocation: deregistration (the last [`ShadowMr`] of a segment dropped)
//! first has the router mark the region revoked in its header, which every
//! mapper checks before and after each access ([`RemoteMap::read`]), then
//! moves private pages back under the buffer. A peer that ignores the
//! header keeps a mapping of pages the application no longer uses.
//!
//! A transfer holds its segment too, so the last holder may be a progress
//! thread of ours (the verbs device's) finishing a transfer after the
//! application deregistered: such a thread leaves the pages to the next
//! registration or deregistration on an application thread
//! ([`progress_thread`]), because moving them loses the writes other
//! threads make meanwhile, and the application writes freely once it has
//! deregistered.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::client::{one_fd, unexpected, Shared};
use crate::error::{Error, Result};
use crate::proto::{Reply, Request};
use crate::shadow;
use crate::shm::{self, SharedMem};

/// A process's shadow segments, by start address.
pub(crate) type Segments = BTreeMap<usize, Weak<Segment>>;

thread_local! {
    static PROGRESS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of ours that progresses transfers beside
/// the application's threads (the verbs device's service thread): pages of
/// a segment whose last holder it drops are given back to the application
/// (moved back to private memory) later, at the next registration or
/// deregistration, on an application thread. Meanwhile they stay the
/// revoked region's pages, which the application may go on using.
pub fn progress_thread() {
    PROGRESS.with(|p| p.set(true));
}

/// A moved segment's pages, revoked, to be given back (see [`progress_thread`]).
pub(crate) struct GiveBack {
    file: OwnedFd,
    addr: usize,
    len: usize,
}

/// Moves `[addr, addr+len)` back to private pages if it still maps `file`.
fn give_back(file: &OwnedFd, addr: usize, len: usize) {
    // SAFETY: we installed [addr, addr+len) from this file at this offset;
    // restore checks it is still there before touching it.
    match unsafe { shadow::restore(file.as_fd(), shm::region_header() as u64, addr, len) } {
        Ok(true) => {}
        Ok(false) => log::debug!("shadow segment {addr:#x}+{len} was unmapped before deregistration"),
        Err(e) => log::warn!("cannot give {addr:#x}+{len} private pages back: {e}"),
    }
}

/// Gives back the pages progress threads left (on an application thread).
fn give_back_left(ctx: &Shared) {
    if PROGRESS.with(|p| p.get()) {
        return;
    }
    let left = std::mem::take(&mut *ctx.give_back.lock().unwrap_or_else(|p| p.into_inner()));
    for g in left {
        give_back(&g.file, g.addr, g.len);
    }
}

/// Asks the router for a region of `len` data bytes: (id, [read-write key,
/// read-only key], file).
pub(crate) fn alloc(ctx: &Shared, len: usize) -> Result<(u64, [u64; 2], OwnedFd)> {
    match ctx.rpc(&Request::AllocRegion { len: len as u64 })? {
        (Reply::Region { region, len: l, key, read_key }, fds) if l == len as u64 => Ok((region, [key, read_key], one_fd(fds)?)),
        (r, _) => Err(unexpected(r)),
    }
}

/// What a peer needs to map a shadow region: which router holds it, the
/// region, its key (read-write, or the read-only one), and the owner's
/// address of its first data byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    pub router_id: [u8; 16],
    pub region: u64,
    pub key: u64,
    pub base: u64,
}

impl RemoteKey {
    pub const LEN: usize = 40;

    pub fn write(&self, b: &mut [u8; Self::LEN]) {
        b[..16].copy_from_slice(&self.router_id);
        b[16..24].copy_from_slice(&self.region.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.to_le_bytes());
        b[32..40].copy_from_slice(&self.base.to_le_bytes());
    }

    pub fn read(b: &[u8; Self::LEN]) -> RemoteKey {
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        RemoteKey { router_id: b[..16].try_into().unwrap(), region: u(16), key: u(24), base: u(32) }
    }
}

/// One shadow segment: a router region mapped at `[addr, addr+len)`,
/// either moved under registered memory (`moved`) or allocated as a
/// [`crate::Region`]. Registrations and sends inside it share it.
pub(crate) struct Segment {
    ctx: Arc<Shared>,
    region: u64,
    /// Read-write and read-only.
    keys: [u64; 2],
    /// The region's file, kept to give the pages back (moved segments; an
    /// allocated one's mapping holds its own, so it costs one descriptor).
    file: Option<OwnedFd>,
    addr: usize,
    len: usize,
    moved: bool,
}

impl Segment {
    pub(crate) fn region(&self) -> u64 {
        self.region
    }

    fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.addr && addr + len <= self.addr + self.len
    }

    /// Its pages are about to leave this process (its [`crate::Region`]
    /// is dropped), while registrations, sends or posts may still hold it:
    /// it leaves the table now, so that memory mapped later at these
    /// addresses (the kernel reuses them) is never taken for it. Else a
    /// buffer there would be sent from, or received into, this region's
    /// pages instead of its own.
    pub(crate) fn unlist(self: &Arc<Segment>) {
        let mut t = self.ctx.segments.lock().unwrap_or_else(|p| p.into_inner());
        self.unlist_from(&mut t);
    }

    /// [`Segment::unlist`] with the table's lock held.
    fn unlist_from(self: &Arc<Segment>, t: &mut Segments) {
        if t.get(&self.addr).is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self))) {
            t.remove(&self.addr);
        }
    }

    /// Whether the whole pages `[addr, addr+len)` of this segment are still
    /// its mapping (/proc/self/maps). A moved segment's range may have been
    /// unmapped by the application while registrations still hold it (free
    /// of a large block, the heap shrinking, with a registration cache
    /// that deregisters later), and new private memory mapped there since:
    /// a registration of that memory must not share the old segment, or
    /// sends from it would carry the old pages and receives into it land
    /// in them. An allocated region's mapping lives as long as its
    /// [`crate::Region`], which unlists it when it goes.
    fn still_mapped(&self, addr: usize, len: usize) -> bool {
        let Some(file) = self.file.as_ref().filter(|_| self.moved) else { return true };
        let offset = (shm::region_header() + (addr - self.addr)) as u64;
        shadow::maps_file(file.as_fd(), offset, addr, len).unwrap_or(false)
    }

    /// The key peers map it with: read-write, or read-only.
    pub(crate) fn remote_key(&self, write: bool) -> RemoteKey {
        let key = self.keys[usize::from(!write)];
        RemoteKey { router_id: self.ctx.router_id, region: self.region, key, base: self.addr as u64 }
    }
}

/// The shadow segment holding the most of `[ptr, ptr+len)` that one
/// segment can: the one holding its first whole page; (segment, start, n)
/// of the part inside it. It trusts the table (a check of the mapping per
/// send cost a 64 KiB stream on one host 0.58x): memory mapped where a
/// registered buffer was unmapped, while that registration is still held,
/// is taken for the old pages until it is registered itself (which
/// [`register`] checks, and registration caches do) or the old
/// registration goes, as a stale memory key names a NIC's old pages.
pub(crate) fn find(ctx: &Shared, ptr: usize, len: usize) -> Option<(Arc<Segment>, usize, usize)> {
    let (page, n) = shadow::interior(ptr, len);
    if n == 0 {
        return None;
    }
    let table = ctx.segments.lock().unwrap_or_else(|e| e.into_inner());
    let seg = table.range(..=page).next_back().and_then(|(_, w)| w.upgrade());
    drop(table); // before `seg` may drop, whose drop takes the lock
    let seg = seg.filter(|s| s.contains(page, shadow::page_size()))?;
    let start = ptr.max(seg.addr);
    let end = (ptr + len).min(seg.addr + seg.len);
    Some((seg, start, end - start))
}

/// Peers' regions mapped by one process, at most [`MAX_MAPS`].
pub(crate) type Maps = std::collections::HashMap<RemoteKey, Arc<RemoteMap>>;

/// Peers' regions kept mapped per process.
pub const MAX_MAPS: usize = 1024;

impl Drop for Segment {
    fn drop(&mut self) {
        // Revoke first, so a peer's access racing with us fails, then give
        // the application private pages again.
        if let Err(e) = self.ctx.rpc(&Request::FreeRegion { region: self.region }) {
            log::warn!("freeing shadow region {}: {e}", self.region);
        }
        match self.file.take().filter(|_| self.moved) {
            Some(file) if PROGRESS.with(|p| p.get()) => {
                let g = GiveBack { file, addr: self.addr, len: self.len };
                self.ctx.give_back.lock().unwrap_or_else(|p| p.into_inner()).push(g);
            }
            Some(file) => give_back(&file, self.addr, self.len),
            None => {}
        }
        // An application thread's deregistration (or a progress thread's,
        // which this skips): a moment to give back what progress threads left.
        give_back_left(&self.ctx);
        let mut t = self.ctx.segments.lock().unwrap_or_else(|p| p.into_inner());
        if t.get(&self.addr).is_some_and(|w| w.strong_count() == 0) {
            t.remove(&self.addr);
        }
    }
}

/// A registration. Its whole pages are shadow memory unless
/// [`ShadowMr::why_not`] says why not; dropping it deregisters.
pub struct ShadowMr {
    ptr: usize,
    len: usize,
    seg: Option<Arc<Segment>>,
    why_not: Option<String>,
}

impl ShadowMr {
    pub fn ptr(&self) -> usize {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part of the registration peers reach directly: its whole pages
    /// (start, length); length 0 if none are shared.
    pub fn shared_range(&self) -> (usize, usize) {
        match &self.seg {
            Some(_) => shadow::interior(self.ptr, self.len),
            None => (self.ptr, 0),
        }
    }

    /// The key peers map the shared part with (read-write).
    pub fn remote_key(&self) -> Option<RemoteKey> {
        self.seg.as_ref().map(|s| s.remote_key(true))
    }

    /// A key that maps the shared part read-only.
    pub fn remote_read_key(&self) -> Option<RemoteKey> {
        self.seg.as_ref().map(|s| s.remote_key(false))
    }

    /// Why nothing is shared, if so.
    pub fn why_not(&self) -> Option<&str> {
        self.why_not.as_deref()
    }
}

impl Drop for ShadowMr {
    fn drop(&mut self) {
        // A deregistration, so an application thread (or an application's
        // call): a moment to give back what progress threads left.
        if let Some(seg) = self.seg.take() {
            let ctx = seg.ctx.clone();
            match Arc::into_inner(seg) {
                // The last registration: the segment's drop gives back its
                // pages and what progress threads left.
                Some(last) => drop(last),
                None => give_back_left(&ctx),
            }
        }
    }
}

impl std::fmt::Debug for ShadowMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShadowMr({:#x}+{}, shared {:?}, {:?})", self.ptr, self.len, self.shared_range(), self.why_not)
    }
}

/// See [`crate::Context::register_shadow`].
pub(crate) unsafe fn register(ctx: &Arc<Shared>, ptr: *const u8, len: usize, may_move: bool) -> Result<ShadowMr> {
    let p = ptr as usize;
    if ptr.is_null() && len > 0 || p.checked_add(len).is_none() {
        return Err(Error::InvalidArgument(format!("bad memory range {ptr:?}+{len}")));
    }
    let private = |why: String| Ok(ShadowMr { ptr: p, len, seg: None, why_not: Some(why) });
    // Before looking at the mappings: pages left to give back may lie here.
    give_back_left(ctx);
    let (start, n) = shadow::interior(p, len);
    if n == 0 {
        return private("the range holds no whole page".into());
    }
    let mut table = ctx.segments.lock().unwrap_or_else(|e| e.into_inner());
    // Segments are disjoint, so those overlapping us are the last ones
    // starting before our end, back to the first that ends before us.
    let mut overlapping: Vec<Arc<Segment>> = table
        .range(..start + n)
        .rev()
        .filter_map(|(_, w)| w.upgrade())
        .take_while(|s| s.addr + s.len > start)
        .collect();
    // Those the application unmapped under their registrations are not
    // shadow memory any more (see `Segment::still_mapped`).
    overlapping.retain(|s| {
        let (from, to) = (s.addr.max(start), (s.addr + s.len).min(start + n));
        let live = s.still_mapped(from, to - from);
        if !live {
            s.unlist_from(&mut table);
        }
        live
    });
    let result = match overlapping.as_slice() {
        [s] if s.contains(start, n) => Ok(ShadowMr { ptr: p, len, seg: Some(s.clone()), why_not: None }),
        [] if !may_move => private("not inside shadow memory (and moving pages was not asked for)".into()),
        [] => match make_segment(ctx, start, n) {
            Ok(seg) => {
                table.insert(start, Arc::downgrade(&seg));
                Ok(ShadowMr { ptr: p, len, seg: Some(seg), why_not: None })
            }
            Err(e) => private(e.to_string()),
        },
        _ => private("the range overlaps shadow memory of another registration in part".into()),
    };
    drop(table); // before `overlapping`, whose drop may take the lock
    result
}

unsafe fn make_segment(ctx: &Arc<Shared>, addr: usize, len: usize) -> Result<Arc<Segment>> {
    shadow::check_private_anon(addr, len)?;
    let (region, keys, fd) = alloc(ctx, len)?;
    let header = shm::region_header();
    let file = OwnedFd::from(shm::checked_file(fd, header + len)?);
    if let Err(e) = shadow::install(file.as_fd(), header as u64, addr, len) {
        let _ = ctx.rpc(&Request::FreeRegion { region });
        return Err(e);
    }
    Ok(Arc::new(Segment { ctx: ctx.clone(), region, keys, file: Some(file), addr, len, moved: true }))
}

/// See [`crate::Context::alloc_region`]: a region mapped here, entered in
/// the segment table so that registrations and sends inside it use it.
pub(crate) fn alloc_region(ctx: &Arc<Shared>, len: usize) -> Result<crate::Region> {
    let (region, keys, fd) = alloc(ctx, len)?;
    let header = shm::region_header();
    let mem = match SharedMem::from_fd(fd, header + len) {
        Ok(m) => m,
        Err(e) => {
            let _ = ctx.rpc(&Request::FreeRegion { region });
            return Err(e);
        }
    };
    // SAFETY: the data part of the mapping just made.
    let addr = unsafe { mem.as_ptr().add(header) } as usize;
    let seg = Arc::new(Segment { ctx: ctx.clone(), region, keys, file: None, addr, len, moved: false });
    ctx.segments.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, Arc::downgrade(&seg));
    Ok(crate::Region::new(seg, mem))
}

/// A peer's shadow region, mapped here (read-only if granted so).
pub struct RemoteMap {
    mem: SharedMem,
    base: u64,
    len: usize,
    writable: bool,
}

/// See [`crate::Context::map_remote`]: mapped once, then from the cache
/// while the region is live.
pub(crate) fn map_remote(ctx: &Shared, k: &RemoteKey) -> Result<Arc<RemoteMap>> {
    let mut m = ctx.maps.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = m.get(k).filter(|map| map.is_live()) {
        return Ok(map.clone());
    }
    let map = Arc::new(map_new(ctx, k)?);
    if m.len() >= MAX_MAPS {
        // Revoked regions go first; if all are live, any one (it is mapped
        // again when next named).
        m.retain(|_, map| map.is_live());
        if let Some(&old) = m.keys().next().filter(|_| m.len() >= MAX_MAPS) {
            m.remove(&old);
        }
    }
    m.insert(*k, map.clone());
    Ok(map)
}

fn map_new(ctx: &Shared, k: &RemoteKey) -> Result<RemoteMap> {
    if k.router_id != ctx.router_id {
        return Err(Error::InvalidArgument("the remote key names memory on another host".into()));
    }
    match ctx.rpc(&Request::MapRegion { region: k.region, key: k.key })? {
        (Reply::Region { region, len, .. }, fds) if region == k.region => {
            let len = usize::try_from(len).map_err(|_| Error::protocol("region too large"))?;
            let header = shm::region_header();
            let file_len = header.checked_add(len).ok_or_else(|| Error::protocol("region too large"))?;
            let fd = one_fd(fds)?;
            // SAFETY: F_GETFL on a descriptor we own.
            let writable = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDWR;
            let mem = if writable { SharedMem::from_fd(fd, file_len)? } else { SharedMem::from_fd_read_only(fd, file_len)? };
            Ok(RemoteMap { mem, base: k.base, len, writable })
        }
        (r, _) => Err(unexpected(r)),
    }
}

impl RemoteMap {
    /// The owner's address of the region's first byte, and its length.
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// False once the owner deregistered (or exited).
    pub fn is_live(&self) -> bool {
        self.mem.region_state().load(Ordering::Acquire) == shm::REGION_LIVE
    }

    /// Where the owner's `[addr, addr+n)` is mapped here, if inside the region.
    pub fn at(&self, addr: u64, n: usize) -> Result<*mut u8> {
        let off = addr.checked_sub(self.base).filter(|o| o.checked_add(n as u64).is_some_and(|e| e <= self.len as u64));
        match off {
            // SAFETY: inside the data part of the mapping.
            Some(o) => Ok(unsafe { self.mem.as_ptr().add(shm::region_header() + o as usize) }),
            None => Err(Error::InvalidArgument(format!("{addr:#x}+{n} is outside the remote region {:#x}+{}", self.base, self.len))),
        }
    }

    fn live(&self) -> Result<()> {
        if self.is_live() {
            Ok(())
        } else {
            Err(Error::InvalidHandle("the remote memory was deregistered".into()))
        }
    }

    /// Copies the owner's `[addr, addr+n)` to `dst`. Fails if the region
    /// was revoked before or while copying.
    ///
    /// # Safety
    /// `dst` is valid for `n` bytes of writes.
    pub unsafe fn read(&self, addr: u64, dst: *mut u8, n: usize) -> Result<()> {
        self.live()?;
        let src = self.at(addr, n)?;
        // `dst` is our process's memory, maybe a receive's buffer.
        let w = shadow::writing();
        std::ptr::copy_nonoverlapping(src, dst, n);
        drop(w);
        self.live()
    }

    /// Where the owner's `[addr, addr+n)` is mapped here, for the caller to
    /// read and write directly (`uct_rkey_ptr`): checked like [`Self::at`],
    /// and the mapping must be writable and live now. The pointer stays
    /// valid while this mapping is held; after a revocation it points at
    /// pages the owner no longer uses.
    pub fn ptr(&self, addr: u64, n: usize) -> Result<*mut u8> {
        if !self.writable {
            return Err(Error::InvalidArgument("the remote memory was granted read-only".into()));
        }
        self.live()?;
        self.at(addr, n)
    }

    /// Does `op` atomically on the owner's word at `addr` (see
    /// [`crate::atomic`]): one CPU atomic on the shared page, so atomic with
    /// respect to the owner's own atomics too. Returns the word's old value.
    /// Fails if the word is misaligned, outside the region, the region is
    /// read-only here, or it was revoked before the operation (a revocation
    /// racing with it may let it land in pages the owner just gave up, like
    /// a write a NIC made just before deregistration).
    pub fn atomic(&self, addr: u64, width: crate::atomic::Width, op: crate::atomic::AtomicOp, value: u64, compare: u64) -> Result<u64> {
        if !crate::atomic::aligned(addr, width) {
            return Err(Error::InvalidArgument(format!("{addr:#x} is not aligned for a {}-byte atomic", width.bytes())));
        }
        let p = self.ptr(addr, width.bytes())?;
        // The mapping's data part is page aligned, so `p` is aligned as `addr`.
        // SAFETY: inside the mapping (checked), aligned, writable.
        Ok(unsafe { crate::atomic::apply(p, width, op, value, compare) })
    }

    /// Copies `src` into the owner's `[addr, addr+n)`; fails as [`Self::read`].
    ///
    /// # Safety
    /// `src` is valid for `n` bytes of reads.
    pub unsafe fn write(&self, addr: u64, src: *const u8, n: usize) -> Result<()> {
        if !self.writable {
            return Err(Error::InvalidArgument("the remote memory was granted read-only".into()));
        }
        self.live()?;
        std::ptr::copy_nonoverlapping(src, self.at(addr, n)?, n);
        self.live()
    }
}
