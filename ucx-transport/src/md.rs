//! The memory domain: one router attachment (ffcore `Context`) per opened
//! domain, and the registrations remote keys refer to.
//!
//! Registration never pins or maps anything: peers cannot see each other's
//! memory (they live in different containers). A registration is an entry
//! in this domain's table under a random 64-bit key of its own; its packed
//! key (domain cookie, key, base, length) lets a peer *ask* this process to
//! read or write inside that range, and the request is checked against the
//! table before any byte moves ([`crate::iface`]). Keys are independent
//! random values, so the key of one registration tells its holder nothing
//! about the others ([`Registry`]).

use crate::internal::*;
use crate::proto::{PackedRkey, Registry};
use crate::sys::*;
use std::os::raw::{c_char, c_uint, c_void};
use std::sync::Mutex;

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
}

/// What a registration handle points to.
pub struct Memh {
    pub key: u64,
    pub base: u64,
    pub len: u64,
}

/// An unpacked remote key (what `uct_rkey_t` points to).
pub type Rkey = PackedRkey;

pub static MD_OPS: UctMdOps = UctMdOps {
    close: Some(md_close),
    query: Some(md_query),
    mem_alloc: Some(ucs_empty_function_return_unsupported),
    mem_free: Some(ucs_empty_function_return_unsupported),
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
pub fn socket_for(config: *const uct_md_config_t) -> String {
    // SAFETY: UCX passes the bundle it parsed from our MD table (or null).
    unsafe { crate::config::router_socket(config) }.unwrap_or_else(ffcore::client::socket_path)
}

/// True if `UCX_TLS` names `ff` explicitly (then a missing router is an
/// error worth a warning; otherwise UCX just uses other transports).
pub fn ff_requested() -> bool {
    std::env::var("UCX_TLS").is_ok_and(|v| v.split(',').any(|t| t.trim().trim_start_matches('^') == "ff" && !t.trim().starts_with('^')))
}

pub unsafe extern "C" fn md_open(component: *mut UctComponent, _name: *const c_char, config: *const uct_md_config_t, md_p: *mut uct_md_h) -> ucs_status_t {
    let socket = socket_for(config);
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
    });
    *md_p = Box::into_raw(md) as uct_md_h;
    UCS_OK
}

unsafe extern "C" fn md_close(md: uct_md_h) {
    if !md.is_null() {
        drop(Box::from_raw(md as *mut Md));
    }
}

unsafe extern "C" fn md_query(_md: uct_md_h, attr: *mut uct_md_attr_t) -> ucs_status_t {
    let a = &mut *attr;
    *a = std::mem::zeroed();
    a.cap.flags = (UCT_MD_FLAG_REG | UCT_MD_FLAG_NEED_RKEY) as u64;
    a.cap.max_reg = usize::MAX;
    a.cap.max_alloc = 0;
    a.cap.reg_mem_types = 1 << UCS_MEMORY_TYPE_HOST;
    a.cap.access_mem_types = 1 << UCS_MEMORY_TYPE_HOST;
    a.cap.detect_mem_types = 0;
    a.cap.alloc_mem_types = 0;
    a.rkey_packed_size = PackedRkey::LEN;
    // Registration is a table insert: about 100 ns, independent of size.
    a.reg_cost = ucs_linear_func_t { c: 100e-9, m: 0.0 };
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
    let Some(key) = md.regs.lock().unwrap_or_else(|p| p.into_inner()).insert(address as u64, length as u64) else {
        ff_error!("ff: cannot register memory: no random bytes from the kernel for its key");
        return UCS_ERR_IO_ERROR;
    };
    *memh_p = Box::into_raw(Box::new(Memh { key, base: address as u64, len: length as u64 })) as uct_mem_h;
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
    let h = Box::from_raw(memh as *mut Memh);
    md.regs.lock().unwrap_or_else(|p| p.into_inner()).remove(h.key);
    UCS_OK
}

unsafe extern "C" fn mkey_pack(md: uct_md_h, memh: uct_mem_h, _params: *const MkeyPackParams, buf: *mut c_void) -> ucs_status_t {
    if memh.is_null() || buf.is_null() {
        return UCS_ERR_INVALID_PARAM;
    }
    let md = &*(md as *const Md);
    let h = &*(memh as *const Memh);
    let k = PackedRkey { cookie: md.cookie, key: h.key, base: h.base, len: h.len };
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
    *rkey_p = Box::into_raw(Box::new(k)) as uct_rkey_t;
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
