//! The memory domain: one router attachment (ffcore `Context`) per opened
//! domain, and the registrations remote keys refer to.
//!
//! A registration is an entry in this domain's table under a random 64-bit
//! key of its own; its packed key (domain cookie, key, base, length) lets a
//! peer *ask* this process to read or write inside that range, and the
//! request is checked against the table before any byte moves
//! ([`crate::iface`]). Keys are independent random values, so the key of one
//! registration tells its holder nothing about the others ([`Registry`]).
//!
//! Memory UCX asks this domain to allocate (`UCT_MD_FLAG_ALLOC`: UCP's
//! own buffers) is a shadow region ([`ffcore::mr`]), and a registration
//! inside shadow memory shares it (unless `UCX_FF_SHADOW=n`): the packed
//! key then carries the shadow region's key, and a peer of the tenant on
//! the same host maps those pages and copies straight between the two
//! buffers ([`Md::remote_map`], used by [`crate::ep`]'s PUT and GET).
//! Other memory (the application's) is moved onto shadow memory only with
//! `UCX_FF_SHADOW_MOVE=y`: UCX's registration cache merges ranges and
//! keeps registrations of memory the allocator frees and hands out again,
//! so the pages moved (and moved back) may be written by other threads
//! meanwhile, and such writes are lost (TensorFlow's heap got corrupted
//! that way).
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

use crate::internal::*;
use crate::proto::{PackedRkey, Registry};
use crate::sys::*;
use std::os::raw::{c_char, c_uint, c_void};
use std::sync::{Arc, Mutex};

#[repr(C)]
pub struct Md {
    pub super_: UctMd,
    /// The router attachment; None when no router was reachable.
    pub ctx: Option<ffcore::Context>,
    pub socket: String,
    /// Random per domain: a packed key from another domain (or a forged
    /// one) does not match.
    pub cookie: u64,
    pub regs: Mutex<Registry>,
    /// Allocations, and registrations inside them, are shadow memory
    /// (`UCX_FF_SHADOW`).
    pub shadow: bool,
    /// Other registrations move their pages onto shadow memory too
    /// (`UCX_FF_SHADOW_MOVE`).
    pub shadow_move: bool,
    /// UCX's registration cache in front of `mem_reg`/`mem_dereg` (None if
    /// UCX could not make one: then every registration is made anew).
    rcache: Option<crate::rcache::Rcache>,
    /// Advertise `UCT_MD_FLAG_RKEY_PTR` (`UCX_FF_RKEY_PTR`).
    pub rkey_ptr: bool,
}

/// The open domains of this process (addresses of [`Md`]s), for
/// `uct_rkey_ptr`, which UCX calls with the component alone: it maps a
/// peer's region through a domain attached to the key's router.
static OPEN_MDS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl Md {
    /// The peer region `k` names, mapped (ffcore keeps mappings while the
    /// region is live); None if it is not mappable from here (another host,
    /// revoked, no router), so the caller takes the message path.
    pub fn remote_map(&self, k: &ffcore::RemoteKey) -> Option<Arc<ffcore::RemoteMap>> {
        let ctx = self.ctx.as_ref()?;
        ctx.map_remote(k).map_err(|e| ff_debug!("ff: cannot map a peer's region: {e}")).ok()
    }

    /// A registration of `[base, base+len)`: a table entry, and shadow
    /// memory unless disabled or impossible.
    ///
    /// # Safety
    /// `[base, base+len)` is memory of this process (what UCX registers).
    pub unsafe fn new_memh(&self, base: u64, len: u64) -> Result<Box<Memh>, ucs_status_t> {
        let mem = match self.ctx.as_ref().filter(|_| self.shadow && len > 0) {
            // SAFETY: UCX registers memory of this process. Moving pages
            // is the user's choice (UCX_FF_SHADOW_MOVE), with its hazards.
            Some(ctx) => match if self.shadow_move {
                ctx.register_shadow(base as *const u8, len as usize)
            } else {
                ctx.register_in_shadow(base as *const u8, len as usize)
            } {
                Ok(mr) => {
                    if let Some(why) = mr.why_not() {
                        ff_debug!("ff: {base:#x}+{len} stays private: {why}");
                    }
                    Backing::Shadow(mr)
                }
                Err(e) => {
                    ff_debug!("ff: no shadow memory for {base:#x}+{len}: {e}");
                    Backing::Plain
                }
            },
            None => Backing::Plain,
        };
        self.new_memh_with(base, len, mem)
    }

    fn new_memh_with(&self, base: u64, len: u64, mem: Backing) -> Result<Box<Memh>, ucs_status_t> {
        let Some(key) = self.regs.lock().unwrap_or_else(|p| p.into_inner()).insert(base, len) else {
            ff_error!("ff: cannot register memory: no random bytes from the kernel for its key");
            return Err(UCS_ERR_IO_ERROR);
        };
        Ok(Box::new(Memh { key, base, len, mem, cached: std::ptr::null_mut() }))
    }

    /// Deregisters: peers' requests are refused from now on, and shadow
    /// memory goes back to private pages.
    pub fn drop_memh(&self, h: Box<Memh>) {
        self.regs.lock().unwrap_or_else(|p| p.into_inner()).remove(h.key);
        drop(h); // its shadow memory, after the key is gone
    }
}

/// What a registration handle points to.
pub struct Memh {
    pub key: u64,
    pub base: u64,
    pub len: u64,
    pub mem: Backing,
    /// The cache region holding it; null if not from the cache.
    pub cached: *mut ucs_rcache_region_t,
}

/// What backs a registration besides the application's memory.
pub enum Backing {
    /// Nothing: peers' PUTs and GETs go through the connection.
    Plain,
    /// Its whole pages were made shadow memory.
    Shadow(ffcore::ShadowMr),
    /// Memory this domain allocated: a shadow region.
    Alloc(ffcore::Region),
}

impl Memh {
    fn shadow_key(&self) -> Option<ffcore::RemoteKey> {
        match &self.mem {
            Backing::Plain => None,
            Backing::Shadow(mr) => mr.remote_key(),
            Backing::Alloc(r) => Some(r.remote_key()),
        }
    }
}

/// An unpacked remote key (what `uct_rkey_t` points to): the packed key,
/// and the peer's region once mapped here (kept while the key lives, so
/// that a pointer from `uct_rkey_ptr` stays valid until `rkey_release`).
#[repr(C)]
pub struct Rkey {
    pub packed: PackedRkey,
    map: std::sync::OnceLock<Option<Arc<ffcore::RemoteMap>>>,
}

impl Rkey {
    pub fn new(packed: PackedRkey) -> Rkey {
        Rkey { packed, map: std::sync::OnceLock::new() }
    }

    /// The peer's shadow region, mapped through `md` (once per key; None
    /// if the key has none or it is not mappable from here: another host,
    /// another tenant, revoked).
    pub fn map(&self, md: &Md) -> Option<&Arc<ffcore::RemoteMap>> {
        self.map.get_or_init(|| self.packed.shadow.and_then(|sk| md.remote_map(&sk))).as_ref()
    }

    /// As [`Self::map`], through any open domain attached to the key's
    /// router (for `uct_rkey_ptr`).
    fn map_any(&self) -> Option<&Arc<ffcore::RemoteMap>> {
        if let Some(m) = self.map.get() {
            return m.as_ref();
        }
        let sk = self.packed.shadow?;
        let mds = OPEN_MDS.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: domains leave the list (under this lock) before closing.
        let md = mds.iter().map(|&m| unsafe { &*(m as *const Md) }).find(|md| md.ctx.as_ref().is_some_and(|c| c.router_id() == sk.router_id))?;
        let m = md.remote_map(&sk)?;
        drop(mds);
        self.map.get_or_init(|| Some(m)).as_ref()
    }
}

pub static MD_OPS: UctMdOps = UctMdOps {
    close: Some(md_close),
    query: Some(md_query),
    mem_alloc: Some(mem_alloc),
    mem_free: Some(mem_free),
    mem_advise: Some(ucs_empty_function_return_unsupported),
    mem_reg: Some(mem_reg),
    mem_dereg: Some(mem_dereg),
    mem_query: Some(ucs_empty_function_return_unsupported),
    mkey_pack: Some(mkey_pack),
    is_sockaddr_accessible: Some(is_sockaddr_accessible),
    detect_memory_type: Some(ucs_empty_function_return_unsupported),
};

/// The domain cookie: random, or (no random source at all) at least
/// different per process and time. Registration keys have no such fallback
/// (see [`Registry`]): they are what protects the memory.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if crate::proto::fill_random(&mut b) {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) ^ (&b as *const u8 as u64)
}

/// The router socket this domain uses: `UCX_FF_ROUTER_SOCKET`, else
/// `FF_ROUTER_SOCKET`, else the default.
///
/// # Safety
/// `config` is null or the bundle UCX parsed from our MD config table.
pub unsafe fn socket_for(config: *const uct_md_config_t) -> String {
    crate::config::router_socket(config).unwrap_or_else(ffcore::client::socket_path)
}

/// True if `UCX_TLS` names `ff` explicitly (then a missing router is an
/// error worth a warning; otherwise UCX just uses other transports).
pub fn ff_requested() -> bool {
    std::env::var("UCX_TLS").is_ok_and(|v| v.split(',').any(|t| t.trim().trim_start_matches('^') == "ff" && !t.trim().starts_with('^')))
}

pub unsafe extern "C" fn md_open(component: *mut UctComponent, _name: *const c_char, config: *const uct_md_config_t, md_p: *mut uct_md_h) -> ucs_status_t {
    let socket = socket_for(config);
    let shadow = crate::config::shadow(config);
    let shadow_move = crate::config::shadow_move(config);
    let cached = crate::config::rcache(config);
    let heap = crate::config::heap(config);
    let ctx = match ffcore::Context::with_socket(&socket) {
        Ok(c) => {
            ff_debug!("attached to the FreeFlow router at {socket} (tenant {})", c.tenant());
            Some(c)
        }
        Err(e) => {
            if ff_requested() {
                ff_warn!("transport ff has no device: {e}");
            } else {
                ff_debug!("transport ff has no device: {e}");
            }
            None
        }
    };
    let md = Box::new(Md {
        super_: UctMd { ops: &MD_OPS, component },
        ctx,
        socket,
        cookie: random_u64(),
        regs: Mutex::new(Registry::default()),
        shadow,
        shadow_move,
        rcache: None,
        rkey_ptr: crate::config::rkey_ptr(config),
    });
    let md = Box::into_raw(md);
    if let (Some(ctx), Some((min, max))) = ((*md).ctx.as_ref(), heap) {
        crate::heap::attach(md as usize, ctx.region_maker(), min, max);
    }
    OPEN_MDS.lock().unwrap_or_else(|p| p.into_inner()).push(md as usize);
    // The cache calls back into the domain, at its final address.
    if cached {
        match crate::rcache::Rcache::new(md) {
            Ok(rc) => (*md).rcache = Some(rc),
            Err(s) => ff_diag!("ff: no registration cache ({s}): every registration is made anew"),
        }
    }
    *md_p = md as uct_md_h;
    UCS_OK
}

unsafe extern "C" fn md_close(md: uct_md_h) {
    if !md.is_null() {
        OPEN_MDS.lock().unwrap_or_else(|p| p.into_inner()).retain(|&m| m != md as usize);
        crate::heap::detach(md as usize);
        let mut md = Box::from_raw(md as *mut Md);
        // First: it deregisters what it holds through the domain.
        drop(md.rcache.take());
        drop(md);
    }
}

unsafe extern "C" fn md_query(md: uct_md_h, attr: *mut uct_md_attr_t) -> ucs_status_t {
    let a = &mut *attr;
    *a = std::mem::zeroed();
    let md = &*(md as *const Md);
    a.cap.flags = (UCT_MD_FLAG_REG | UCT_MD_FLAG_NEED_RKEY) as u64;
    if md.rkey_ptr {
        a.cap.flags |= UCT_MD_FLAG_RKEY_PTR as u64;
    }
    a.cap.max_reg = usize::MAX;
    if md.ctx.is_some() {
        a.cap.flags |= UCT_MD_FLAG_ALLOC as u64;
        a.cap.max_alloc = ffcore::proto::MAX_REGION;
        a.cap.alloc_mem_types = 1 << UCS_MEMORY_TYPE_HOST;
    }
    a.cap.reg_mem_types = 1 << UCS_MEMORY_TYPE_HOST;
    a.cap.access_mem_types = 1 << UCS_MEMORY_TYPE_HOST;
    a.cap.detect_mem_types = 0;
    a.rkey_packed_size = PackedRkey::LEN;
    // A table insert, plus (shadow memory) a router round trip and a copy
    // of the pages; UCP's registration cache pays it once per buffer.
    a.reg_cost = if md.shadow_move { ucs_linear_func_t { c: 30e-6, m: 1.0 / 4e9 } } else { ucs_linear_func_t { c: 100e-9, m: 0.0 } };
    let name = b"ff\0";
    for (i, &b) in name.iter().enumerate() {
        a.component_name[i] = b as c_char;
    }
    // local_cpus: all CPUs (zeroed means none; set every bit).
    for w in a.local_cpus.ucs_bits.iter_mut() {
        *w = !0;
    }
    UCS_OK
}

unsafe extern "C" fn mem_reg(md: uct_md_h, address: *mut c_void, length: usize, _flags: c_uint, memh_p: *mut uct_mem_h) -> ucs_status_t {
    let md = &*(md as *const Md);
    if memh_p.is_null() || (address.is_null() && length > 0) || (address as u64).checked_add(length as u64).is_none() {
        return UCS_ERR_INVALID_PARAM;
    }
    let made = match &md.rcache {
        Some(rc) => rc.get(address, length),
        None => md.new_memh(address as u64, length as u64).map(Box::into_raw),
    };
    match made {
        Ok(h) => {
            *memh_p = h as uct_mem_h;
            UCS_OK
        }
        Err(s) => s,
    }
}

unsafe extern "C" fn mem_alloc(
    md: uct_md_h,
    length_p: *mut usize,
    address_p: *mut *mut c_void,
    mem_type: ucs_memory_type_t,
    _flags: c_uint,
    _name: *const c_char,
    memh_p: *mut uct_mem_h,
) -> ucs_status_t {
    let md = &*(md as *const Md);
    if length_p.is_null() || address_p.is_null() || memh_p.is_null() || *length_p == 0 {
        return UCS_ERR_INVALID_PARAM;
    }
    if mem_type != UCS_MEMORY_TYPE_HOST {
        return UCS_ERR_UNSUPPORTED;
    }
    let Some(ctx) = md.ctx.as_ref() else { return UCS_ERR_NO_DEVICE };
    let page = ffcore::shadow::page_size();
    let Some(len) = (*length_p).checked_next_multiple_of(page) else { return UCS_ERR_INVALID_PARAM };
    let region = match ctx.alloc_region(len) {
        Ok(r) => r,
        Err(e) => {
            ff_debug!("ff: cannot allocate {len} bytes of shadow memory: {e}");
            return UCS_ERR_NO_MEMORY;
        }
    };
    let addr = region.as_ptr();
    match md.new_memh_with(addr as u64, len as u64, Backing::Alloc(region)) {
        Ok(h) => {
            *memh_p = Box::into_raw(h) as uct_mem_h;
            *length_p = len;
            *address_p = addr as *mut c_void;
            UCS_OK
        }
        Err(s) => s,
    }
}

unsafe extern "C" fn mem_free(md: uct_md_h, memh: uct_mem_h) -> ucs_status_t {
    if memh.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let md = &*(md as *const Md);
    md.drop_memh(Box::from_raw(memh as *mut Memh));
    UCS_OK
}

unsafe extern "C" fn mem_dereg(md: uct_md_h, params: *const MemDeregParams) -> ucs_status_t {
    // The checks UCT_MD_MEM_DEREG_CHECK_PARAMS makes in UCX's own domains.
    if params.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let p = &*params;
    let memh = if p.field_mask & UCT_MD_MEM_DEREG_FIELD_MEMH != 0 { p.memh } else { std::ptr::null_mut() };
    if memh.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let flags = if p.field_mask & UCT_MD_MEM_DEREG_FIELD_FLAGS != 0 { p.flags } else { 0 };
    if flags & UCT_MD_MEM_DEREG_FLAG_INVALIDATE != 0 {
        return UCS_ERR_UNSUPPORTED;
    }
    let md = &*(md as *const Md);
    let h = memh as *mut Memh;
    match &md.rcache {
        Some(rc) if !(*h).cached.is_null() => rc.put(&*h),
        _ => md.drop_memh(Box::from_raw(h)),
    }
    UCS_OK
}

unsafe extern "C" fn mkey_pack(md: uct_md_h, memh: uct_mem_h, _params: *const MkeyPackParams, buf: *mut c_void) -> ucs_status_t {
    if memh.is_null() || buf.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let md = &*(md as *const Md);
    let h = &*(memh as *const Memh);
    let k = PackedRkey { cookie: md.cookie, key: h.key, base: h.base, len: h.len, shadow: h.shadow_key() };
    k.write(std::slice::from_raw_parts_mut(buf as *mut u8, PackedRkey::LEN));
    UCS_OK
}

unsafe extern "C" fn is_sockaddr_accessible(_md: uct_md_h, _sa: *const c_void, _mode: i32) -> i32 {
    0
}

pub unsafe extern "C" fn rkey_unpack(_c: *mut UctComponent, buf: *const c_void, rkey_p: *mut uct_rkey_t, handle_p: *mut *mut c_void) -> ucs_status_t {
    let Some(k) = PackedRkey::read(std::slice::from_raw_parts(buf as *const u8, PackedRkey::LEN)) else {
        return UCS_ERR_INVALID_PARAM;
    };
    *rkey_p = Box::into_raw(Box::new(Rkey::new(k))) as uct_rkey_t;
    if !handle_p.is_null() {
        *handle_p = std::ptr::null_mut();
    }
    UCS_OK
}

pub unsafe extern "C" fn rkey_release(_c: *mut UctComponent, rkey: uct_rkey_t, _handle: *mut c_void) -> ucs_status_t {
    if rkey != 0 && rkey != usize::MAX {
        drop(Box::from_raw(rkey as *mut Rkey));
    }
    UCS_OK
}

/// `uct_rkey_ptr`: where the peer's `raddr` is mapped in this process, so
/// the caller reads and writes the peer's registered memory itself. Only
/// for a key of a peer on this host (of this tenant) and an address in the
/// whole pages of its registration that are shadow memory:
/// `UCS_ERR_UNREACHABLE` for memory on another host or not shared (no
/// shadow key, `UCX_FF_SHADOW=n`, revoked), `UCS_ERR_INVALID_ADDR` outside
/// the registration or in its partial first or last page. The pointer is
/// valid until the key is released.
pub unsafe extern "C" fn rkey_ptr(_c: *mut UctComponent, rkey: uct_rkey_t, _handle: *mut c_void, raddr: u64, laddr_p: *mut *mut c_void) -> ucs_status_t {
    if rkey == 0 || rkey == usize::MAX || laddr_p.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let k = &*(rkey as *const Rkey);
    if !k.packed.covers(raddr, 1) {
        return UCS_ERR_INVALID_ADDR;
    }
    let Some(map) = k.map_any() else { return UCS_ERR_UNREACHABLE };
    match map.ptr(raddr, 1) {
        Ok(p) => {
            *laddr_p = p as *mut c_void;
            UCS_OK
        }
        Err(ffcore::Error::InvalidArgument(_)) if map.is_live() => UCS_ERR_INVALID_ADDR,
        Err(_) => UCS_ERR_UNREACHABLE,
    }
}
