//! The exported libibverbs functions (`ffv_NAME`, versioned as `NAME` by
//! build.rs) and the context's ops table. Everything unsafe about the C
//! boundary is here: pointers from the application are checked for null
//! and trusted to point where verbs.h says; every entry catches panics
//! (none unwinds into C) and fails the way libibverbs does (errno, or an
//! error number returned).
//!
//! The C objects the application holds are the first field of our own
//! (`#[repr(C)]`) boxes, so a pointer to one is a pointer to the other.

// Every exported function's contract is libibverbs' (verbs.h): the module
// doc above says what is checked and what is trusted.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::offset_of;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, OnceLock};

use crate::dev::{Channel, Cq, Device, Mr};
use crate::qp::{InlineData, Op, Qp, RecvWr, SendWr, Sge, Sges, MAX_INLINE_DATA, MAX_SGE, MAX_WR};
use crate::srq::{Srq, MAX_SRQ, MAX_SRQ_WR};
use crate::ud::{UdQp, UdSend, UD_MTU};
use crate::cqx::CqBox;
use crate::wr::QpBox;
use crate::sys::*;

const DEV_NAME: &str = "ff0";

fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

/// Runs `f`, turning a panic into `fail` (with errno EIO).
fn guard<T>(fail: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

/// What the generated stubs call: says once per process what is missing.
pub fn unsupported(name: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("FFVERBS_QUIET").is_none() {
            eprintln!("ffverbs: {name} is not supported by the FreeFlow device (EOPNOTSUPP)");
        }
    });
    log::debug!("ffverbs: {name}: not supported");
    set_errno(libc::EOPNOTSUPP);
}

fn logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(level) = std::env::var("FFVERBS_LOG") {
            struct L(log::LevelFilter);
            impl log::Log for L {
                fn enabled(&self, m: &log::Metadata) -> bool {
                    m.level() <= self.0
                }
                fn log(&self, r: &log::Record) {
                    if self.enabled(r.metadata()) {
                        eprintln!("ffverbs {}: {}", r.level(), r.args());
                    }
                }
                fn flush(&self) {}
            }
            let f = level.parse().unwrap_or(log::LevelFilter::Info);
            if log::set_logger(Box::leak(Box::new(L(f)))).is_ok() {
                log::set_max_level(f);
            }
        }
    });
}

// ---- objects -------------------------------------------------------------

#[repr(C)]
pub struct CtxBox {
    vctx: verbs_context,
    dev: Arc<Device>,
}

#[repr(C)]
struct PdBox {
    ibv: ibv_pd,
}

#[repr(C)]
struct MrBox {
    ibv: ibv_mr,
}

#[repr(C)]
struct ChanBox {
    ibv: ibv_comp_channel,
    ch: Arc<Channel>,
}

/// An address handle: the destination context's GID.
#[repr(C)]
struct AhBox {
    ibv: ibv_ah,
    gid: [u8; 16],
}

#[repr(C)]
struct SrqBox {
    ibv: ibv_srq,
    srq: Arc<Srq>,
}

/// # Safety
/// `c` is a context this library opened.
unsafe fn dev_of<'a>(c: *mut ibv_context) -> &'a Arc<Device> {
    let b = (c as *mut u8).sub(offset_of!(verbs_context, context)) as *const CtxBox;
    &(*b).dev
}

/// Initialises the mutex and condition variable that verbs.h's CQ and QP
/// structs carry for the application.
///
/// # Safety
/// `M` and `C` are bindgen's copies of `pthread_mutex_t` and
/// `pthread_cond_t` (same size and alignment as libc's).
unsafe fn init_lock<M, C>(mutex: &mut M, cond: &mut C) {
    libc::pthread_mutex_init(mutex as *mut M as *mut libc::pthread_mutex_t, std::ptr::null());
    libc::pthread_cond_init(cond as *mut C as *mut libc::pthread_cond_t, std::ptr::null());
}

fn device() -> *mut ibv_device {
    static DEV: OnceLock<usize> = OnceLock::new();
    *DEV.get_or_init(|| {
        let mut d = ibv_device { node_type: IBV_NODE_CA, transport_type: IBV_TRANSPORT_IB, ..Default::default() };
        fill(&mut d.name, DEV_NAME);
        fill(&mut d.dev_name, "uverbs_ff0");
        fill(&mut d.dev_path, "/sys/class/infiniband_verbs/uverbs_ff0");
        fill(&mut d.ibdev_path, "/sys/class/infiniband/ff0");
        Box::into_raw(Box::new(d)) as usize
    }) as *mut ibv_device
}

fn fill(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
}

fn guid() -> u64 {
    // "FF" + "verbs", big endian on the wire.
    u64::to_be(0x4646_0000_0000_0001)
}

// ---- devices -------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_device_list(num: *mut c_int) -> *mut *mut ibv_device {
    guard(std::ptr::null_mut(), || {
        logger();
        let list = libc::calloc(2, std::mem::size_of::<*mut ibv_device>()) as *mut *mut ibv_device;
        if list.is_null() {
            set_errno(libc::ENOMEM);
            return list;
        }
        *list = device();
        if !num.is_null() {
            *num = 1;
        }
        list
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_free_device_list(list: *mut *mut ibv_device) {
    libc::free(list as *mut c_void);
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_device_name(d: *mut ibv_device) -> *const c_char {
    if d.is_null() {
        return std::ptr::null();
    }
    (*d).name.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_device_guid(_d: *mut ibv_device) -> u64 {
    guid()
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_device_index(_d: *mut ibv_device) -> c_int {
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_open_device(d: *mut ibv_device) -> *mut ibv_context {
    guard(std::ptr::null_mut(), || {
        logger();
        if d != device() {
            set_errno(libc::ENODEV);
            return std::ptr::null_mut();
        }
        let dev = match Device::open() {
            Ok(dev) => dev,
            Err(e) => {
                eprintln!("ffverbs: cannot open {DEV_NAME}: {e} (is ffrouter running, and FF_ROUTER_SOCKET set?)");
                set_errno(libc::ENODEV);
                return std::ptr::null_mut();
            }
        };
        let mut vctx = verbs_context { sz: std::mem::size_of::<verbs_context>(), query_port: Some(query_port_ex), create_qp_ex: Some(create_qp_ex), create_cq_ex: Some(create_cq_ex), ..Default::default() };
        let c = &mut vctx.context;
        c.device = d;
        c.abi_compat = usize::MAX as *mut c_void;
        c.num_comp_vectors = 1;
        // Descriptors the application may poll: never readable here.
        c.cmd_fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        // Readable when an asynchronous event (an SRQ's limit) is due.
        c.async_fd = dev.async_efd.as_raw_fd();
        libc::pthread_mutex_init(&mut c.mutex as *mut _ as *mut libc::pthread_mutex_t, std::ptr::null());
        c.ops.poll_cq = Some(poll_cq);
        c.ops.req_notify_cq = Some(req_notify_cq);
        c.ops.post_send = Some(post_send);
        c.ops.post_recv = Some(post_recv);
        c.ops.post_srq_recv = Some(post_srq_recv);
        c.ops.bind_mw = Some(bind_mw);
        let b = Box::into_raw(Box::new(CtxBox { vctx, dev }));
        &mut (*b).vctx.context
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_close_device(c: *mut ibv_context) -> c_int {
    guard(libc::EIO, || {
        if c.is_null() {
            return libc::EINVAL;
        }
        let b = Box::from_raw((c as *mut u8).sub(offset_of!(verbs_context, context)) as *mut CtxBox);
        b.dev.close();
        libc::close(b.vctx.context.cmd_fd);
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_device(c: *mut ibv_context, a: *mut ibv_device_attr) -> c_int {
    if c.is_null() || a.is_null() {
        return libc::EINVAL;
    }
    let mut d = ibv_device_attr::default();
    fill(&mut d.fw_ver, concat!("ffverbs ", env!("CARGO_PKG_VERSION")));
    d.node_guid = guid();
    d.sys_image_guid = guid();
    d.max_mr_size = u64::MAX;
    d.page_size_cap = 4096;
    d.vendor_id = 0x4646;
    d.max_qp = 1 << 16;
    d.max_qp_wr = MAX_WR as c_int;
    d.device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_PORT_ACTIVE_EVENT | IBV_DEVICE_SRQ_RESIZE;
    d.max_sge = MAX_SGE as c_int;
    d.max_sge_rd = MAX_SGE as c_int;
    d.max_cq = 1 << 16;
    d.max_cqe = 1 << 22;
    d.max_mr = 1 << 20;
    d.max_pd = 1 << 16;
    d.max_qp_rd_atom = 16;
    d.max_res_rd_atom = 16 << 16;
    d.max_qp_init_rd_atom = 16;
    d.max_srq = MAX_SRQ as c_int;
    d.max_srq_wr = MAX_SRQ_WR as c_int;
    d.max_srq_sge = MAX_SGE as c_int;
    d.atomic_cap = IBV_ATOMIC_HCA;
    d.max_pkeys = 1;
    d.local_ca_ack_delay = 16;
    d.phys_port_cnt = 1;
    *a = d;
    0
}

/// The port as a NIC's reads: active, or down (and its link disabled)
/// once the router went away.
fn port_attr(down: bool) -> ibv_port_attr {
    ibv_port_attr {
        state: if down { IBV_PORT_DOWN } else { IBV_PORT_ACTIVE },
        max_mtu: IBV_MTU_4096,
        active_mtu: IBV_MTU_4096,
        gid_tbl_len: 1,
        max_msg_sz: 1 << 31,
        pkey_tbl_len: 1,
        max_vl_num: 1,
        active_width: 2,  // 4X
        active_speed: 32, // 25 Gb/s per lane: "100 Gb/s"
        phys_state: if down { 3 } else { 5 }, // Disabled, LinkUp
        link_layer: IBV_LINK_LAYER_ETHERNET as u8,
        ..Default::default()
    }
}

/// The old `ibv_query_port` ABI: the attributes up to `link_layer`.
#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_port(c: *mut ibv_context, port: u8, a: *mut c_void) -> c_int {
    if c.is_null() || a.is_null() || port != 1 {
        return libc::EINVAL;
    }
    let p = port_attr(dev_of(c).port.is_down());
    std::ptr::copy_nonoverlapping(&p as *const _ as *const u8, a as *mut u8, offset_of!(ibv_port_attr, flags));
    0
}

unsafe extern "C" fn query_port_ex(c: *mut ibv_context, port: u8, a: *mut ibv_port_attr, len: usize) -> c_int {
    if c.is_null() || a.is_null() || port != 1 {
        return libc::EINVAL;
    }
    let p = port_attr(dev_of(c).port.is_down());
    std::ptr::copy_nonoverlapping(&p as *const _ as *const u8, a as *mut u8, len.min(std::mem::size_of::<ibv_port_attr>()));
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_gid(c: *mut ibv_context, port: u8, index: c_int, gid: *mut ibv_gid) -> c_int {
    if c.is_null() || gid.is_null() || port != 1 || index != 0 {
        return -1;
    }
    (*gid).raw = dev_of(c).port.gid;
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv__ibv_query_gid_ex(c: *mut ibv_context, port: u32, index: u32, e: *mut ibv_gid_entry, flags: u32, size: usize) -> c_int {
    if c.is_null() || e.is_null() || flags != 0 || size < std::mem::size_of::<ibv_gid_entry>() {
        return libc::EINVAL;
    }
    if port != 1 || index != 0 {
        return libc::ENODATA;
    }
    *e = ibv_gid_entry { gid: ibv_gid { raw: dev_of(c).port.gid }, gid_index: 0, port_num: 1, gid_type: IBV_GID_TYPE_ROCE_V2, ndev_ifindex: 0 };
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv__ibv_query_gid_table(c: *mut ibv_context, e: *mut ibv_gid_entry, max: usize, flags: u32, size: usize) -> isize {
    if max == 0 {
        return 0;
    }
    match ffv__ibv_query_gid_ex(c, 1, 0, e, flags, size) {
        0 => 1,
        err => -(err as isize),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_gid_type(c: *mut ibv_context, port: u8, index: c_uint, t: *mut c_uint) -> c_int {
    if c.is_null() || t.is_null() || port != 1 || index != 0 {
        return libc::EINVAL;
    }
    *t = 1; // IBV_GID_TYPE_SYSFS_ROCE_V2
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_pkey(c: *mut ibv_context, port: u8, index: c_int, pkey: *mut u16) -> c_int {
    if c.is_null() || pkey.is_null() || port != 1 || index != 0 {
        return -1;
    }
    *pkey = 0xffffu16.to_be();
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_pkey_index(_c: *mut ibv_context, port: u8, pkey: u16) -> c_int {
    if port == 1 && u16::from_be(pkey) & 0x7fff == 0x7fff {
        0
    } else {
        set_errno(libc::ENOENT);
        -1
    }
}

// ---- protection domains and registrations --------------------------------

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_alloc_pd(c: *mut ibv_context) -> *mut ibv_pd {
    if c.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let b = Box::into_raw(Box::new(PdBox { ibv: ibv_pd { context: c, handle: 0 } }));
    &mut (*b).ibv
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int {
    if pd.is_null() {
        return libc::EINVAL;
    }
    drop(Box::from_raw(pd as *mut PdBox));
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_reg_mr(pd: *mut ibv_pd, addr: *mut c_void, len: usize, access: c_int) -> *mut ibv_mr {
    ffv_ibv_reg_mr_iova2(pd, addr, len, addr as u64, access as c_uint)
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_reg_mr_iova(pd: *mut ibv_pd, addr: *mut c_void, len: usize, iova: u64, access: c_int) -> *mut ibv_mr {
    ffv_ibv_reg_mr_iova2(pd, addr, len, iova, access as c_uint)
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_reg_mr_iova2(pd: *mut ibv_pd, addr: *mut c_void, len: usize, iova: u64, access: c_uint) -> *mut ibv_mr {
    guard(std::ptr::null_mut(), || {
        if pd.is_null() || (addr.is_null() && len > 0) || (addr as usize).checked_add(len).is_none() {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        if iova != addr as u64 {
            // Remote addresses are the application's own virtual addresses.
            set_errno(libc::EOPNOTSUPP);
            return std::ptr::null_mut();
        }
        // Remote write and atomics need local write, as on a NIC.
        if access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC) != 0 && access & IBV_ACCESS_LOCAL_WRITE == 0 {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let c = (*pd).context;
        let dev = dev_of(c);
        // The registration makes the buffer's whole pages shadow memory
        // (ffcore's registration, as the UCX transport's): sends from it
        // and receives into it then skip a copy. FFVERBS_SHADOW=n keeps
        // every page private.
        let shadow = if std::env::var("FFVERBS_SHADOW").is_ok_and(|v| v == "n") || len == 0 {
            None
        } else {
            // SAFETY: the application registers memory it owns, and (as
            // for a NIC, whose registration pins it) does not write it from
            // other threads while it registers or deregisters it.
            match dev.port.ff.register_shadow(addr as *const u8, len) {
                Ok(m) => Some(m),
                Err(e) => {
                    log::debug!("ffverbs: {addr:?}+{len} stays private: {e}");
                    None
                }
            }
        };
        let key = dev.new_key();
        let mr = Mr { addr: addr as u64, len: len as u64, access, pd: pd as usize, key, shadow };
        dev.mrs.write().unwrap().insert(key, mr);
        let b = Box::into_raw(Box::new(MrBox { ibv: ibv_mr { context: c, pd, addr, length: len, handle: key, lkey: key, rkey: key } }));
        &mut (*b).ibv
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_dereg_mr(mr: *mut ibv_mr) -> c_int {
    guard(libc::EIO, || {
        if mr.is_null() {
            return libc::EINVAL;
        }
        let b = Box::from_raw(mr as *mut MrBox);
        let mr = dev_of(b.ibv.context).mrs.write().unwrap().remove(&b.ibv.lkey);
        // Dropped after the lock: giving shadow pages back takes
        // milliseconds, and every work request's check waits on the lock.
        drop(mr);
        0
    })
}

// ---- completion queues and channels --------------------------------------

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_comp_channel(c: *mut ibv_context) -> *mut ibv_comp_channel {
    guard(std::ptr::null_mut(), || {
        if c.is_null() {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let ch = match Channel::new() {
            Ok(ch) => Arc::new(ch),
            Err(e) => {
                set_errno(e.raw_os_error().unwrap_or(libc::EMFILE));
                return std::ptr::null_mut();
            }
        };
        let fd = ch.efd.as_raw_fd();
        let b = Box::into_raw(Box::new(ChanBox { ibv: ibv_comp_channel { context: c, fd, refcnt: 0 }, ch }));
        &mut (*b).ibv
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int {
    if ch.is_null() {
        return libc::EINVAL;
    }
    if (*ch).refcnt > 0 {
        return libc::EBUSY;
    }
    drop(Box::from_raw(ch as *mut ChanBox));
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_cq(c: *mut ibv_context, cqe: c_int, cq_context: *mut c_void, ch: *mut ibv_comp_channel, _vector: c_int) -> *mut ibv_cq {
    guard(std::ptr::null_mut(), || {
        if c.is_null() || !(1..=1 << 22).contains(&cqe) {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let chan = if ch.is_null() {
            None
        } else {
            (*ch).refcnt += 1;
            Some((*(ch as *mut ChanBox)).ch.clone())
        };
        let cq = Arc::new(Cq::new(dev_of(c), chan));
        let mut ibv = ibv_cq_ex { context: c, channel: ch, cq_context, cqe, ..Default::default() };
        init_lock(&mut ibv.mutex, &mut ibv.cond);
        let b = Box::into_raw(CqBox::new(ibv, cq));
        (&*b).cq.ibv.store(b as u64, Ordering::Relaxed);
        b as *mut ibv_cq
    })
}

/// `ibv_create_cq_ex` (through the context's ops): a completion queue
/// with the standard completion fields ([`crate::cqx`]).
unsafe extern "C" fn create_cq_ex(c: *mut ibv_context, a: *mut ibv_cq_init_attr_ex) -> *mut ibv_cq_ex {
    guard(std::ptr::null_mut(), || {
        if a.is_null() {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let a = &*a;
        let flags = if a.comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS != 0 { a.flags } else { 0 };
        if a.wc_flags & !crate::cqx::WC_FLAGS != 0 || a.comp_mask & !IBV_CQ_INIT_ATTR_MASK_FLAGS != 0 || flags & !crate::cqx::CREATE_FLAGS != 0 {
            set_errno(libc::EOPNOTSUPP);
            return std::ptr::null_mut();
        }
        let Ok(cqe) = c_int::try_from(a.cqe) else {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        };
        log::debug!("ffverbs: ibv_create_cq_ex, completion fields {:#x}, flags {flags:#x}", a.wc_flags);
        // The ibv_cq is the first part of the box's ibv_cq_ex.
        ffv_ibv_create_cq(c, cqe, a.cq_context, a.channel, a.comp_vector as c_int) as *mut ibv_cq_ex
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_destroy_cq(cq: *mut ibv_cq) -> c_int {
    guard(libc::EIO, || {
        if cq.is_null() {
            return libc::EINVAL;
        }
        let dev = dev_of((*cq).context);
        let b = cq as *mut CqBox;
        let e = dev.engine.lock().unwrap();
        let uses = |s: &Arc<Cq>, r: &Arc<Cq>| Arc::ptr_eq(s, &(*b).cq) || Arc::ptr_eq(r, &(*b).cq);
        if e.qps.values().any(|q| uses(&q.send_cq, &q.recv_cq)) || e.ud_qps.values().any(|q| uses(&q.send_cq, &q.recv_cq)) {
            return libc::EBUSY;
        }
        drop(e);
        if !(*cq).channel.is_null() {
            (*(*cq).channel).refcnt -= 1;
        }
        drop(Box::from_raw(b));
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_cq_event(ch: *mut ibv_comp_channel, cq: *mut *mut ibv_cq, ctx: *mut *mut c_void) -> c_int {
    guard(-1, || {
        if ch.is_null() || cq.is_null() || ctx.is_null() {
            set_errno(libc::EINVAL);
            return -1;
        }
        let chan = &(*(ch as *mut ChanBox)).ch;
        // A blocking descriptor: wait for the event on the connections
        // themselves (one wake-up instead of two, see `qp::wait_event`);
        // the read below then finds its count, or blocks as before.
        let flags = libc::fcntl((*ch).fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 && !(*ch).context.is_null() {
            if let crate::qp::EventWait::Interrupted = crate::qp::wait_event(dev_of((*ch).context), chan) {
                set_errno(libc::EINTR);
                return -1;
            }
        }
        let mut v = 0u64;
        // Blocks unless the application made the descriptor non-blocking.
        if libc::read((*ch).fd, &mut v as *mut u64 as *mut c_void, 8) != 8 {
            return -1;
        }
        let Some(b) = chan.events.lock().unwrap().pop_front() else {
            set_errno(libc::EAGAIN);
            return -1;
        };
        let b = &mut *(b as *mut CqBox);
        b.cq.events_got.fetch_add(1, Ordering::Relaxed);
        *cq = b as *mut CqBox as *mut ibv_cq;
        *ctx = b.ibv.cq_context;
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_ack_cq_events(cq: *mut ibv_cq, n: c_uint) {
    if !cq.is_null() {
        let b = &*(cq as *const CqBox);
        b.cq.events_acked.fetch_add(n, Ordering::Relaxed);
        (*cq).comp_events_completed = (*cq).comp_events_completed.wrapping_add(n);
    }
}

unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    guard(-1, || {
        if cq.is_null() || n < 0 || (wc.is_null() && n > 0) {
            return -1;
        }
        poll_some(cq, std::slice::from_raw_parts_mut(wc, n as usize)) as c_int
    })
}

/// Completions of `cq` into `out` (after moving data if none was there):
/// how many. `cq` is one of ours.
pub(crate) unsafe fn poll_some(cq: *mut ibv_cq, out: &mut [ibv_wc]) -> usize {
    let b = &*(cq as *mut CqBox);
    let dev = dev_of((*cq).context);
    dev.app_active();
    let got = b.cq.pop(out);
    if got > 0 || out.is_empty() {
        return got;
    }
    dev.progress();
    let got = b.cq.pop(out);
    if got == 0 {
        b.cq.idle_poll();
    }
    got
}

unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, _solicited_only: c_int) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    let b = &*(cq as *mut CqBox);
    if b.cq.chan.is_none() {
        // Nothing to notify (NICs accept this too).
        return 0;
    }
    b.cq.arm();
    // The service thread must now notice completions without us polling,
    // unless this thread waits for its events itself (`qp::wait_event`),
    // as it did a moment ago.
    let dev = dev_of((*cq).context);
    if !dev.waits_directly() {
        dev.kick();
    }
    0
}

// ---- queue pairs -----------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_qp(pd: *mut ibv_pd, a: *mut ibv_qp_init_attr) -> *mut ibv_qp {
    guard(std::ptr::null_mut(), || {
        if pd.is_null() || a.is_null() || (*a).send_cq.is_null() || (*a).recv_cq.is_null() {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let a = &mut *a;
        let ud = a.qp_type == IBV_QPT_UD;
        // UC queue pairs are RC ones that take no READ or atomic (see
        // post_send): reliable, which no UC application counts against.
        if (a.qp_type != IBV_QPT_RC && a.qp_type != IBV_QPT_UC && !ud) || (ud && !a.srq.is_null()) {
            set_errno(libc::EOPNOTSUPP);
            return std::ptr::null_mut();
        }
        let c = (*pd).context;
        if !a.srq.is_null() && (*a.srq).context != c {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let cap = &mut a.cap;
        // With an SRQ the receive queue's sizes are ignored (as by NICs).
        let (recv_wr, recv_sge) = if a.srq.is_null() { (cap.max_recv_wr, cap.max_recv_sge) } else { (0, 0) };
        if cap.max_send_wr > MAX_WR || recv_wr > MAX_WR || cap.max_send_sge > MAX_SGE || recv_sge > MAX_SGE || cap.max_inline_data > MAX_INLINE_DATA {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        cap.max_send_sge = cap.max_send_sge.max(1);
        cap.max_recv_wr = recv_wr;
        cap.max_recv_sge = if a.srq.is_null() { recv_sge.max(1) } else { 0 };
        cap.max_inline_data = MAX_INLINE_DATA;
        let dev = dev_of(c);
        let scq = (*(a.send_cq as *mut CqBox)).cq.clone();
        let rcq = (*(a.recv_cq as *mut CqBox)).cq.clone();
        let srq = (!a.srq.is_null()).then(|| (*(a.srq as *mut SrqBox)).srq.clone());
        let mut e = dev.engine.lock().unwrap();
        let qpn = e.new_qpn();
        if ud {
            e.ud_qps.insert(qpn, UdQp::new(qpn, pd as usize, scq, rcq, a.sq_sig_all != 0, *cap));
        } else {
            e.qps.insert(qpn, Qp::new(qpn, pd as usize, scq, rcq, srq, a.sq_sig_all != 0, *cap));
        }
        drop(e);
        let mut ibv = ibv_qp {
            context: c,
            qp_context: a.qp_context,
            pd,
            send_cq: a.send_cq,
            recv_cq: a.recv_cq,
            srq: a.srq,
            qp_num: qpn,
            handle: qpn,
            state: IBV_QPS_RESET,
            qp_type: a.qp_type,
            ..Default::default()
        };
        init_lock(&mut ibv.mutex, &mut ibv.cond);
        let b = Box::into_raw(QpBox::new(ibv));
        &mut (*b).ibv.qp_base
    })
}

/// `ibv_create_qp_ex` (through the context's ops): a queue pair in a
/// protection domain of this context, with the `ibv_wr_*` operations it
/// asks for among those ff0 does ([`crate::wr::send_ops`]); no creation
/// flags, XRC, TSO or RSS.
unsafe extern "C" fn create_qp_ex(c: *mut ibv_context, a: *mut ibv_qp_init_attr_ex) -> *mut ibv_qp {
    guard(std::ptr::null_mut(), || {
        if a.is_null() || (*a).comp_mask & IBV_QP_INIT_ATTR_PD == 0 || (*a).pd.is_null() || (*(*a).pd).context != c {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let a = &mut *a;
        let known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_CREATE_FLAGS | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        let flags = a.comp_mask & IBV_QP_INIT_ATTR_CREATE_FLAGS != 0 && a.create_flags != 0;
        let ops = if a.comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS != 0 { a.send_ops_flags } else { 0 };
        if a.comp_mask & !known != 0 || flags || ops & !crate::wr::send_ops(a.qp_type) != 0 {
            set_errno(libc::EOPNOTSUPP);
            return std::ptr::null_mut();
        }
        log::debug!("ffverbs: ibv_create_qp_ex, ibv_wr_* operations {ops:#x}");
        // Its first fields are an ibv_qp_init_attr (as libibverbs has it).
        ffv_ibv_create_qp(a.pd, a as *mut ibv_qp_init_attr_ex as *mut ibv_qp_init_attr)
    })
}

/// The `ibv_wr_*` face of a queue pair: every one ff0 makes has it.
#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_qp_to_qp_ex(qp: *mut ibv_qp) -> *mut ibv_qp_ex {
    // The ibv_qp is the first field of the QpBox's ibv_qp_ex.
    qp as *mut ibv_qp_ex
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_destroy_qp(qp: *mut ibv_qp) -> c_int {
    guard(libc::EIO, || {
        if qp.is_null() {
            return libc::EINVAL;
        }
        let dev = dev_of((*qp).context);
        let mut e = dev.engine.lock().unwrap();
        e.remove_qp((*qp).qp_num);
        drop(e);
        drop(Box::from_raw(qp as *mut QpBox));
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_modify_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, mask: c_int) -> c_int {
    guard(libc::EIO, || {
        if qp.is_null() || attr.is_null() {
            return libc::EINVAL;
        }
        let a = &*attr;
        let mask = mask as u32;
        let dev = dev_of((*qp).context);
        let mut e = dev.engine.lock().unwrap();
        if let Some(q) = e.ud_qps.get_mut(&(*qp).qp_num) {
            let r = modify_ud(q, a, mask);
            if r == 0 && mask & IBV_QP_STATE != 0 {
                (*qp).state = q.state;
            }
            return r;
        }
        let qpn = (*qp).qp_num;
        // RTR with its own GID and number: a loopback through a twin.
        let mut dest = a.dest_qp_num;
        if mask & IBV_QP_STATE != 0 && a.qp_state == IBV_QPS_RTR && mask & IBV_QP_DEST_QPN != 0 && a.dest_qp_num == qpn && a.ah_attr.grh.dgid.raw == dev.port.gid {
            if e.qps.get(&qpn).is_none_or(|q| q.state != IBV_QPS_INIT) {
                return libc::EINVAL;
            }
            if mask & IBV_QP_ACCESS_FLAGS != 0 {
                e.qps.get_mut(&qpn).unwrap().access = a.qp_access_flags;
            }
            match e.loopback(dev, qpn) {
                Ok(t) => dest = t,
                Err(err) => return err,
            }
        }
        let Some(q) = e.qps.get_mut(&qpn) else { return libc::EINVAL };
        if mask & IBV_QP_ACCESS_FLAGS != 0 {
            q.access = a.qp_access_flags;
        }
        if mask & IBV_QP_PATH_MTU != 0 {
            q.attr.path_mtu = a.path_mtu;
        }
        if mask & IBV_QP_SQ_PSN != 0 {
            q.attr.sq_psn = a.sq_psn;
        }
        if mask & IBV_QP_RQ_PSN != 0 {
            q.attr.rq_psn = a.rq_psn;
        }
        if mask & IBV_QP_DEST_QPN != 0 {
            q.attr.dest_qp_num = a.dest_qp_num;
        }
        if mask & IBV_QP_AV != 0 {
            q.attr.ah_attr = a.ah_attr;
        }
        if mask & IBV_QP_PORT != 0 {
            q.attr.port_num = a.port_num;
        }
        if mask & IBV_QP_TIMEOUT != 0 {
            q.attr.timeout = a.timeout;
        }
        if mask & IBV_QP_RETRY_CNT != 0 {
            q.attr.retry_cnt = a.retry_cnt;
        }
        if mask & IBV_QP_RNR_RETRY != 0 {
            q.attr.rnr_retry = a.rnr_retry;
        }
        if mask & IBV_QP_MAX_QP_RD_ATOMIC != 0 {
            q.attr.max_rd_atomic = a.max_rd_atomic;
        }
        if mask & IBV_QP_MAX_DEST_RD_ATOMIC != 0 {
            q.attr.max_dest_rd_atomic = a.max_dest_rd_atomic;
        }
        if mask & IBV_QP_MIN_RNR_TIMER != 0 {
            q.attr.min_rnr_timer = a.min_rnr_timer;
        }
        if mask & IBV_QP_STATE == 0 {
            return 0;
        }
        let to = a.qp_state;
        let from = q.state;
        let ok = match to {
            IBV_QPS_RESET | IBV_QPS_ERR => true,
            IBV_QPS_INIT => from == IBV_QPS_RESET || from == IBV_QPS_INIT,
            IBV_QPS_RTR => from == IBV_QPS_INIT,
            IBV_QPS_RTS => from == IBV_QPS_RTR || from == IBV_QPS_RTS,
            _ => false,
        };
        if !ok {
            log::debug!("ffverbs: QP {:#x}: no transition from state {from} to {to}", q.qpn);
            return libc::EINVAL;
        }
        let twin = q.twin;
        match to {
            IBV_QPS_RESET => {
                q.reset();
                q.twin = None;
                if let Some(t) = twin {
                    e.remove_qp(t);
                }
                (*qp).state = to;
                return 0;
            }
            IBV_QPS_ERR => q.fail(dev, IBV_WC_WR_FLUSH_ERR),
            IBV_QPS_RTR => {
                if mask & IBV_QP_AV == 0 || mask & IBV_QP_DEST_QPN == 0 || a.ah_attr.is_global == 0 {
                    log::debug!("ffverbs: QP {:#x}: RTR without a global route (mask {mask:#x})", q.qpn);
                    // The GID says where the peer is: a global route is needed.
                    return libc::EINVAL;
                }
                if let Err(err) = q.to_rtr(dev, a.ah_attr.grh.dgid.raw, dest) {
                    log::debug!("ffverbs: QP {:#x}: RTR refused", q.qpn);
                    return err;
                }
            }
            _ => {}
        }
        q.state = to;
        (*qp).state = to;
        let access = q.access;
        q.progress(dev);
        if let Some(tw) = twin.and_then(|t| e.qps.get_mut(&t)) {
            tw.access = access;
        }
        drop(e);
        dev.kick();
        0
    })
}

/// `ibv_modify_qp` of a UD queue pair: Q_Key, port, P_Key index and SQ
/// PSN, and the same state changes as RC (no peer: RTR needs no address).
fn modify_ud(q: &mut UdQp, a: &ibv_qp_attr, mask: u32) -> c_int {
    if mask & IBV_QP_PORT != 0 && a.port_num != 1 {
        return libc::EINVAL;
    }
    if mask & IBV_QP_PKEY_INDEX != 0 && a.pkey_index != 0 {
        return libc::EINVAL;
    }
    if mask & IBV_QP_STATE != 0 {
        let (from, to) = (q.state, a.qp_state);
        let ok = match to {
            IBV_QPS_RESET | IBV_QPS_ERR => true,
            IBV_QPS_INIT => from == IBV_QPS_RESET || from == IBV_QPS_INIT,
            IBV_QPS_RTR => from == IBV_QPS_INIT,
            IBV_QPS_RTS => from == IBV_QPS_RTR || from == IBV_QPS_RTS,
            _ => false,
        };
        if !ok {
            return libc::EINVAL;
        }
    }
    if mask & IBV_QP_QKEY != 0 {
        q.qkey = a.qkey;
    }
    if mask & IBV_QP_PORT != 0 {
        q.attr.port_num = a.port_num;
    }
    if mask & IBV_QP_SQ_PSN != 0 {
        q.attr.sq_psn = a.sq_psn;
    }
    if mask & IBV_QP_STATE != 0 {
        match a.qp_state {
            IBV_QPS_RESET => q.reset(),
            IBV_QPS_ERR => q.fail(),
            _ => {}
        }
        q.state = a.qp_state;
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, _mask: c_int, init: *mut ibv_qp_init_attr) -> c_int {
    guard(libc::EIO, || {
        if qp.is_null() || attr.is_null() || init.is_null() {
            return libc::EINVAL;
        }
        let dev = dev_of((*qp).context);
        let e = dev.engine.lock().unwrap();
        if let Some(q) = e.ud_qps.get(&(*qp).qp_num) {
            let mut a = q.attr;
            a.qp_state = q.state;
            a.cur_qp_state = q.state;
            a.qkey = q.qkey;
            a.cap = q.cap;
            *attr = a;
            let i = &mut *init;
            i.qp_context = (*qp).qp_context;
            i.send_cq = (*qp).send_cq;
            i.recv_cq = (*qp).recv_cq;
            i.srq = std::ptr::null_mut();
            i.cap = q.cap;
            i.qp_type = IBV_QPT_UD;
            i.sq_sig_all = q.sig_all as c_int;
            return 0;
        }
        let Some(q) = e.qps.get(&(*qp).qp_num) else { return libc::EINVAL };
        let mut a = q.attr;
        a.qp_state = q.state;
        a.cur_qp_state = q.state;
        a.qp_access_flags = q.access;
        a.cap = q.cap;
        *attr = a;
        let i = &mut *init;
        i.qp_context = (*qp).qp_context;
        i.send_cq = (*qp).send_cq;
        i.recv_cq = (*qp).recv_cq;
        i.srq = (*qp).srq;
        i.cap = q.cap;
        i.qp_type = (*qp).qp_type;
        i.sq_sig_all = q.sig_all as c_int;
        0
    })
}

unsafe fn sges(list: *mut ibv_sge, n: c_int) -> Sges {
    if list.is_null() || n <= 0 {
        return Sges::new();
    }
    // Empty elements move no bytes (and may carry a null address).
    std::slice::from_raw_parts(list, n as usize).iter().filter(|s| s.length > 0).map(|s| Sge { addr: s.addr, len: s.length, lkey: s.lkey }).collect()
}

unsafe extern "C" fn post_send(qp: *mut ibv_qp, wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr) -> c_int {
    guard(libc::EIO, || post_list(qp, wr, bad, false))
}

/// Posts the send work requests `wr` on `qp`: as `ibv_post_send` (those
/// before the first that cannot be posted, which `*bad` names), or with
/// `whole` (`ibv_wr_complete`) all of them, or none if one cannot be.
pub(crate) unsafe fn post_list(qp: *mut ibv_qp, mut wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr, whole: bool) -> c_int {
    let dev = dev_of((*qp).context);
    dev.app_active();
    let mut guard = dev.engine.lock().unwrap();
    let e = &mut *guard;
    if let Some(q) = e.ud_qps.get_mut(&(*qp).qp_num) {
        let err = if whole { all_fit(wr, q.sq.len(), q.cap.max_send_wr, |w| ud_send_ok(q, w)).err().unwrap_or(0) } else { 0 };
        let err = if err == 0 { post_send_ud(dev, q, wr, bad) } else { err };
        crate::ud::progress(dev, &mut e.links, &mut e.ud_qps);
        return err;
    }
    let Some(q) = e.qps.get_mut(&(*qp).qp_num) else { return libc::EINVAL };
    let qp_type = (*qp).qp_type;
    if whole {
        // Each request is checked and made ours once, then all are queued.
        let sends = match all_fit(wr, q.send_queue_len(), q.cap.max_send_wr, |w| rc_send(q, qp_type, w)) {
            Ok(sends) => sends,
            Err(e) => return e,
        };
        for s in sends {
            q.post_send(dev, s);
        }
        q.progress_send(dev);
        return 0;
    }
    let mut err = 0;
    while !wr.is_null() {
        let w = &*wr;
        let s = match rc_send(q, qp_type, w) {
            Ok(s) => s,
            Err(e) => {
                err = e;
                break;
            }
        };
        if q.send_queue_len() >= q.cap.max_send_wr.max(1) as usize {
            err = libc::ENOMEM;
            break;
        }
        q.post_send(dev, s);
        wr = w.next;
    }
    if err != 0 && !bad.is_null() {
        *bad = wr;
    }
    q.progress_send(dev);
    err
}

/// What `check` makes of every request of the list (or the first error
/// number it gives), if a send queue holding `queued` requests has room
/// for them all (`room`, at least 1; else `ENOMEM`).
unsafe fn all_fit<T>(mut wr: *mut ibv_send_wr, queued: usize, room: u32, check: impl Fn(&ibv_send_wr) -> Result<T, c_int>) -> Result<Vec<T>, c_int> {
    let mut made = Vec::new();
    while !wr.is_null() {
        made.push(check(&*wr)?);
        if queued + made.len() > room.max(1) as usize {
            return Err(libc::ENOMEM);
        }
        wr = (*wr).next;
    }
    Ok(made)
}

/// A send work request of RC (or UC) queue pair `q`, checked and made
/// ours (inline bytes copied), or what `ibv_post_send` fails it with; the
/// room in the send queue is the caller's to check.
unsafe fn rc_send(q: &Qp, qp_type: ibv_qp_type, w: &ibv_send_wr) -> Result<SendWr, c_int> {
    let op = match w.opcode {
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM => Op::Send,
        IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => Op::Write,
        IBV_WR_RDMA_READ => Op::Read,
        IBV_WR_ATOMIC_FETCH_AND_ADD => Op::FetchAdd { add: w.wr.atomic.compare_add },
        IBV_WR_ATOMIC_CMP_AND_SWP => Op::CmpSwap { compare: w.wr.atomic.compare_add, swap: w.wr.atomic.swap },
        _ => return Err(libc::EINVAL),
    };
    if op.fetches() && qp_type == IBV_QPT_UC {
        // UC has no READ and no atomics (as NICs refuse them).
        return Err(libc::EINVAL);
    }
    let list = sges(w.sg_list, w.num_sge);
    let len: u64 = list.iter().map(|s| s.len as u64).sum();
    let inline_flag = w.send_flags & IBV_SEND_INLINE != 0 && !op.fetches();
    if matches!(op, Op::FetchAdd { .. } | Op::CmpSwap { .. }) && (w.num_sge != 1 || len != 8) {
        // The old value goes to one 8-byte element.
        return Err(libc::EINVAL);
    }
    if w.num_sge < 0 || w.num_sge as u32 > q.cap.max_send_sge.max(1) || (inline_flag && len > MAX_INLINE_DATA as u64) {
        return Err(libc::EINVAL);
    }
    if q.state != IBV_QPS_RTS && q.state != IBV_QPS_ERR {
        return Err(libc::EINVAL);
    }
    let inline = inline_flag.then(|| {
        let mut b = InlineData::with_capacity(len as usize);
        for s in &list {
            b.extend_from_slice(std::slice::from_raw_parts(s.addr as *const u8, s.len as usize));
        }
        b
    });
    let imm = matches!(w.opcode, IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM).then(|| w.__bindgen_anon_1.imm_data);
    let (raddr, rkey) = match op {
        Op::Send => (0, 0),
        Op::FetchAdd { .. } | Op::CmpSwap { .. } => (w.wr.atomic.remote_addr, w.wr.atomic.rkey),
        _ => (w.wr.rdma.remote_addr, w.wr.rdma.rkey),
    };
    Ok(SendWr { wr_id: w.wr_id, op, signaled: q.sig_all || w.send_flags & IBV_SEND_SIGNALED != 0, sges: list, inline, imm, raddr, rkey, len })
}

/// Whether UD queue pair `q` can take send work request `w` (SEND, with
/// immediate or not, to an address handle, at most the MTU, in RTS or
/// ERR), or the error number; the room is the caller's to check.
unsafe fn ud_send_ok(q: &UdQp, w: &ibv_send_wr) -> Result<(), c_int> {
    let len: usize = sges(w.sg_list, w.num_sge).iter().map(|s| s.len as usize).sum();
    if !matches!(w.opcode, IBV_WR_SEND | IBV_WR_SEND_WITH_IMM) || w.wr.ud.ah.is_null() || w.num_sge < 0 || w.num_sge as u32 > q.cap.max_send_sge.max(1) || len > UD_MTU {
        return Err(libc::EINVAL);
    }
    if q.state != IBV_QPS_RTS && q.state != IBV_QPS_ERR {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// Queues UD sends: SEND (with immediate) only, to an address handle, at
/// most the MTU; the bytes are copied now.
unsafe fn post_send_ud(dev: &Device, q: &mut UdQp, mut wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr) -> c_int {
    let mut err = 0;
    while !wr.is_null() {
        let w = &*wr;
        err = ud_send_ok(q, w).err().unwrap_or(0);
        if err != 0 {
            break;
        }
        if q.sq.len() >= q.cap.max_send_wr.max(1) as usize {
            err = libc::ENOMEM;
            break;
        }
        let list = sges(w.sg_list, w.num_sge);
        let len: usize = list.iter().map(|s| s.len as usize).sum();
        let ah = w.wr.ud.ah;
        let signaled = q.sig_all || w.send_flags & IBV_SEND_SIGNALED != 0;
        if q.state == IBV_QPS_ERR {
            q.send_cq.push(ibv_wc { wr_id: w.wr_id, status: IBV_WC_WR_FLUSH_ERR, opcode: IBV_WC_SEND, qp_num: q.qpn, ..Default::default() });
            wr = w.next;
            continue;
        }
        let inline = w.send_flags & IBV_SEND_INLINE != 0;
        if !inline && list.iter().any(|s| dev.check_local(q.pd, s.lkey, s.addr, s.len as u64, false).is_err()) {
            q.send_cq.push(ibv_wc { wr_id: w.wr_id, status: IBV_WC_LOC_PROT_ERR, opcode: IBV_WC_SEND, qp_num: q.qpn, ..Default::default() });
            q.fail();
            wr = w.next;
            continue;
        }
        let mut data = Vec::with_capacity(len);
        for s in &list {
            // SAFETY: checked against a registration above, or (inline) the
            // application's own bytes, readable now (verbs.h's contract).
            data.extend_from_slice(std::slice::from_raw_parts(s.addr as *const u8, s.len as usize));
        }
        // A Q_Key with its top bit set means the queue pair's own.
        let qkey = if w.wr.ud.remote_qkey & 0x8000_0000 != 0 { q.qkey } else { w.wr.ud.remote_qkey };
        let imm = (w.opcode == IBV_WR_SEND_WITH_IMM).then_some(w.__bindgen_anon_1.imm_data);
        let gid = (*(ah as *mut AhBox)).gid;
        q.sq.push_back(UdSend { wr_id: w.wr_id, signaled, gid, qpn: w.wr.ud.remote_qpn & 0xff_ffff, qkey, imm, data });
        wr = w.next;
    }
    if err != 0 && !bad.is_null() {
        *bad = wr;
    }
    err
}

unsafe extern "C" fn post_recv(qp: *mut ibv_qp, mut wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int {
    guard(libc::EIO, || {
        let dev = dev_of((*qp).context);
        dev.app_active();
        let mut e = dev.engine.lock().unwrap();
        if let Some(q) = e.ud_qps.get_mut(&(*qp).qp_num) {
            let mut err = 0;
            while !wr.is_null() {
                let w = &*wr;
                if w.num_sge < 0 || w.num_sge as u32 > q.cap.max_recv_sge.max(1) || q.state == IBV_QPS_RESET {
                    err = libc::EINVAL;
                    break;
                }
                if q.rq.len() >= q.cap.max_recv_wr.max(1) as usize {
                    err = libc::ENOMEM;
                    break;
                }
                let list = sges(w.sg_list, w.num_sge);
                if list.iter().any(|s| dev.check_local(q.pd, s.lkey, s.addr, s.len as u64, true).is_err()) {
                    err = libc::EINVAL;
                    break;
                }
                q.rq.push_back(RecvWr { wr_id: w.wr_id, sges: list });
                wr = w.next;
            }
            if err != 0 && !bad.is_null() {
                *bad = wr;
            }
            return err;
        }
        let Some(q) = e.qps.get_mut(&(*qp).qp_num) else { return libc::EINVAL };
        let mut err = 0;
        while !wr.is_null() {
            let w = &*wr;
            // A queue pair with an SRQ has no receive queue of its own.
            if (q.srq.is_some() && !q.internal_srq) || w.num_sge < 0 || w.num_sge as u32 > q.cap.max_recv_sge.max(1) || q.state == IBV_QPS_RESET {
                err = libc::EINVAL;
                break;
            }
            if q.recv_queue_len() >= q.cap.max_recv_wr.max(1) as usize {
                err = libc::ENOMEM;
                break;
            }
            q.post_recv(dev, RecvWr { wr_id: w.wr_id, sges: sges(w.sg_list, w.num_sge) });
            wr = w.next;
        }
        if err != 0 && !bad.is_null() {
            *bad = wr;
        }
        if q.wants_progress_on_recv() {
            q.progress(dev);
        }
        // A loopback's requests wait at its twin.
        if let Some(tw) = q.twin.and_then(|t| e.qps.get_mut(&t)) {
            if tw.wants_progress_on_recv() {
                tw.progress(dev);
            }
        }
        err
    })
}

// ---- address handles ---------------------------------------------------------

/// An address handle names a device context by its GID (a global route is
/// needed: the GID is the only address ff0 has).
#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_ah(pd: *mut ibv_pd, a: *mut ibv_ah_attr) -> *mut ibv_ah {
    guard(std::ptr::null_mut(), || {
        if pd.is_null() || a.is_null() || (*a).is_global == 0 || (*a).port_num != 1 || (*a).grh.sgid_index != 0 {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let b = Box::into_raw(Box::new(AhBox { ibv: ibv_ah { context: (*pd).context, pd, handle: 0 }, gid: (*a).grh.dgid.raw }));
        &mut (*b).ibv
    })
}

/// The address that answers a received datagram: the source GID of its
/// GRH (ff0's datagrams always carry one; without, there is no address:
/// -1, as libibverbs fails a GRH it cannot read).
#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_init_ah_from_wc(_ctx: *mut ibv_context, port: u8, wc: *mut ibv_wc, grh: *mut ibv_grh, a: *mut ibv_ah_attr) -> c_int {
    guard(-1, || {
        if wc.is_null() || grh.is_null() || a.is_null() || (*wc).wc_flags & IBV_WC_GRH == 0 {
            set_errno(libc::EINVAL);
            return -1;
        }
        let (w, g, a) = (&*wc, &*grh, &mut *a);
        let flow = u32::from_be(g.version_tclass_flow);
        *a = ibv_ah_attr { dlid: w.slid, sl: w.sl, src_path_bits: w.dlid_path_bits, port_num: port, is_global: 1, ..Default::default() };
        a.grh.dgid = g.sgid;
        a.grh.flow_label = flow & 0xfffff;
        a.grh.traffic_class = ((flow >> 20) & 0xff) as u8;
        a.grh.hop_limit = 0xff;
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_ah_from_wc(pd: *mut ibv_pd, wc: *mut ibv_wc, grh: *mut ibv_grh, port: u8) -> *mut ibv_ah {
    let mut a = ibv_ah_attr::default();
    if pd.is_null() || ffv_ibv_init_ah_from_wc((*pd).context, port, wc, grh, &mut a) != 0 {
        return std::ptr::null_mut();
    }
    ffv_ibv_create_ah(pd, &mut a)
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_destroy_ah(ah: *mut ibv_ah) -> c_int {
    if ah.is_null() {
        return libc::EINVAL;
    }
    drop(Box::from_raw(ah as *mut AhBox));
    0
}

// ---- shared receive queues -------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_create_srq(pd: *mut ibv_pd, a: *mut ibv_srq_init_attr) -> *mut ibv_srq {
    guard(std::ptr::null_mut(), || {
        if pd.is_null() || a.is_null() {
            set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
        let a = &mut *a;
        let c = (*pd).context;
        let dev = dev_of(c);
        if dev.srqs.fetch_add(1, Ordering::AcqRel) >= MAX_SRQ {
            dev.srqs.fetch_sub(1, Ordering::AcqRel);
            set_errno(libc::ENOMEM);
            return std::ptr::null_mut();
        }
        let srq = match Srq::new(pd as usize, a.attr.max_wr, a.attr.max_sge, a.attr.srq_limit) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                dev.srqs.fetch_sub(1, Ordering::AcqRel);
                set_errno(e);
                return std::ptr::null_mut();
            }
        };
        // What the SRQ got (verbs.h: written back on success).
        let (max_wr, max_sge, _) = srq.attr();
        a.attr.max_wr = max_wr;
        a.attr.max_sge = max_sge;
        let mut ibv = ibv_srq { context: c, srq_context: a.srq_context, pd, handle: 0, ..Default::default() };
        init_lock(&mut ibv.mutex, &mut ibv.cond);
        let b = Box::into_raw(Box::new(SrqBox { ibv, srq }));
        (&*b).srq.ibv.store(b as u64, Ordering::Relaxed);
        &mut (*b).ibv
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_destroy_srq(srq: *mut ibv_srq) -> c_int {
    guard(libc::EIO, || {
        if srq.is_null() {
            return libc::EINVAL;
        }
        let dev = dev_of((*srq).context);
        let b = srq as *mut SrqBox;
        let e = dev.engine.lock().unwrap();
        if e.qps.values().any(|q| q.srq.as_ref().is_some_and(|s| Arc::ptr_eq(s, &(*b).srq))) {
            return libc::EBUSY;
        }
        drop(e);
        // An event about it that the application has not read names it no
        // more.
        dev.async_events.lock().unwrap().retain(|&(_, el)| el != b as u64);
        dev.srqs.fetch_sub(1, Ordering::AcqRel);
        drop(Box::from_raw(b));
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_modify_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr, mask: c_int) -> c_int {
    guard(libc::EIO, || {
        if srq.is_null() || attr.is_null() {
            return libc::EINVAL;
        }
        let a = &*attr;
        match (*(srq as *mut SrqBox)).srq.modify(mask as u32, a.max_wr, a.srq_limit) {
            Ok(()) => 0,
            Err(e) => e,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> c_int {
    guard(libc::EIO, || {
        if srq.is_null() || attr.is_null() {
            return libc::EINVAL;
        }
        let (max_wr, max_sge, srq_limit) = (*(srq as *mut SrqBox)).srq.attr();
        *attr = ibv_srq_attr { max_wr, max_sge, srq_limit };
        0
    })
}

unsafe extern "C" fn post_srq_recv(srq: *mut ibv_srq, mut wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int {
    guard(libc::EIO, || {
        if srq.is_null() {
            return libc::EINVAL;
        }
        let dev = dev_of((*srq).context);
        dev.app_active();
        let s = &(*(srq as *mut SrqBox)).srq;
        let mut e = dev.engine.lock().unwrap();
        let mut err = 0;
        while !wr.is_null() {
            let w = &*wr;
            if w.num_sge < 0 {
                err = libc::EINVAL;
                break;
            }
            if let Err(x) = s.post(dev, RecvWr { wr_id: w.wr_id, sges: sges(w.sg_list, w.num_sge) }) {
                err = x;
                break;
            }
            wr = w.next;
        }
        if err != 0 && !bad.is_null() {
            *bad = wr;
        }
        // Requests held for want of a receive on its queue pairs go on.
        for q in e.qps.values_mut() {
            if q.srq.as_ref().is_some_and(|x| Arc::ptr_eq(x, s)) && q.wants_progress_on_recv() {
                q.progress(dev);
            }
        }
        err
    })
}

unsafe extern "C" fn bind_mw(_qp: *mut ibv_qp, _mw: *mut ibv_mw, _b: *mut ibv_mw_bind) -> c_int {
    libc::EOPNOTSUPP
}

// ---- events, fork, strings, rates ------------------------------------------

/// The asynchronous events raised: an SRQ's limit reached, and the port's
/// error and the device's fatal error once the router went away
/// ([`Device::watch_router`]). Blocks until one is due (or EAGAIN on a
/// descriptor the application made non-blocking).
#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_get_async_event(c: *mut ibv_context, ev: *mut ibv_async_event) -> c_int {
    guard(-1, || {
        if c.is_null() || ev.is_null() {
            set_errno(libc::EINVAL);
            return -1;
        }
        let mut v = 0u64;
        if libc::read((*c).async_fd, &mut v as *mut u64 as *mut c_void, 8) != 8 {
            return -1;
        }
        let Some((ty, el)) = dev_of(c).async_events.lock().unwrap().pop_front() else {
            // Its SRQ was destroyed meanwhile.
            set_errno(libc::EAGAIN);
            return -1;
        };
        let mut e = ibv_async_event { element: ibv_async_event__bindgen_ty_1 { port_num: 0 }, event_type: ty };
        match ty {
            IBV_EVENT_SRQ_LIMIT_REACHED => e.element.srq = el as *mut ibv_srq,
            IBV_EVENT_PORT_ERR | IBV_EVENT_PORT_ACTIVE => e.element.port_num = el as c_int,
            _ => {}
        }
        *ev = e;
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn ffv_ibv_ack_async_event(ev: *mut ibv_async_event) {
    if ev.is_null() {
        return;
    }
    if (*ev).event_type == IBV_EVENT_SRQ_LIMIT_REACHED {
        let srq = (*ev).element.srq;
        if !srq.is_null() {
            (*srq).events_completed = (*srq).events_completed.wrapping_add(1);
        }
    }
}

#[no_mangle]
pub extern "C" fn ffv_ibv_fork_init() -> c_int {
    0
}

#[no_mangle]
pub extern "C" fn ffv_ibv_is_fork_initialized() -> c_uint {
    2 // IBV_FORK_UNNEEDED: registrations are MADV_DONTFORK'd shadow memory
}

#[no_mangle]
pub extern "C" fn ffv_ibv_dontfork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}

#[no_mangle]
pub extern "C" fn ffv_ibv_dofork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}

#[no_mangle]
pub extern "C" fn ffv_verbs_register_driver_34(_ops: *const c_void) {}

fn cstr(s: &'static CStr) -> *const c_char {
    s.as_ptr()
}

#[no_mangle]
pub extern "C" fn ffv_ibv_wc_status_str(s: c_uint) -> *const c_char {
    const NAMES: [&CStr; 22] = [
        c"success",
        c"local length error",
        c"local QP operation error",
        c"local EE context operation error",
        c"local protection error",
        c"Work Request Flushed Error",
        c"memory management operation error",
        c"bad response error",
        c"local access error",
        c"remote invalid request error",
        c"remote access error",
        c"remote operation error",
        c"transport retry counter exceeded",
        c"RNR retry counter exceeded",
        c"local RDD violation error",
        c"remote invalid RD request",
        c"aborted error",
        c"invalid EE context number",
        c"invalid EE context state",
        c"fatal error",
        c"response timeout error",
        c"general error",
    ];
    cstr(NAMES.get(s as usize).copied().unwrap_or(c"unknown"))
}

#[no_mangle]
pub extern "C" fn ffv_ibv_node_type_str(t: c_int) -> *const c_char {
    cstr(match t {
        1 => c"InfiniBand channel adapter",
        2 => c"InfiniBand switch",
        3 => c"InfiniBand router",
        4 => c"iWARP NIC",
        5 => c"usNIC",
        6 => c"usNIC UDP",
        _ => c"unknown",
    })
}

#[no_mangle]
pub extern "C" fn ffv_ibv_port_state_str(s: c_uint) -> *const c_char {
    cstr(match s {
        0 => c"no state change (NOP)",
        1 => c"down",
        2 => c"init",
        3 => c"armed",
        4 => c"active",
        5 => c"active defer",
        _ => c"unknown",
    })
}

#[no_mangle]
pub extern "C" fn ffv_ibv_event_type_str(e: c_uint) -> *const c_char {
    cstr(match e {
        IBV_EVENT_CQ_ERR => c"CQ error",
        IBV_EVENT_QP_FATAL => c"local work queue catastrophic error",
        IBV_EVENT_QP_REQ_ERR => c"invalid request local work queue error",
        IBV_EVENT_QP_ACCESS_ERR => c"local access violation work queue error",
        IBV_EVENT_COMM_EST => c"communication established",
        IBV_EVENT_SQ_DRAINED => c"send queue drained",
        IBV_EVENT_PATH_MIG => c"path migrated",
        IBV_EVENT_PATH_MIG_ERR => c"path migration request error",
        IBV_EVENT_DEVICE_FATAL => c"local catastrophic error",
        IBV_EVENT_PORT_ACTIVE => c"port active",
        IBV_EVENT_PORT_ERR => c"port error",
        IBV_EVENT_LID_CHANGE => c"LID change",
        IBV_EVENT_PKEY_CHANGE => c"P_Key change",
        IBV_EVENT_SM_CHANGE => c"SM change",
        IBV_EVENT_SRQ_ERR => c"SRQ catastrophic error",
        IBV_EVENT_SRQ_LIMIT_REACHED => c"SRQ limit reached",
        IBV_EVENT_QP_LAST_WQE_REACHED => c"last WQE reached",
        IBV_EVENT_CLIENT_REREGISTER => c"client reregistration",
        IBV_EVENT_GID_CHANGE => c"GID table change",
        IBV_EVENT_WQ_FATAL => c"WQ fatal",
        _ => c"unknown",
    })
}

/// (enum ibv_rate, multiple of 2.5 Gb/s, Mb/s)
const RATES: [(c_int, c_int, c_int); 10] = [
    (2, 1, 2500),
    (5, 2, 5000),
    (3, 4, 10000),
    (6, 8, 20000),
    (4, 12, 30000),
    (7, 16, 40000),
    (8, 24, 60000),
    (9, 32, 80000),
    (10, 48, 120000),
    (18, 40, 100000),
];

#[no_mangle]
pub extern "C" fn ffv_ibv_rate_to_mult(r: c_int) -> c_int {
    RATES.iter().find(|x| x.0 == r).map_or(0, |x| x.1)
}

#[no_mangle]
pub extern "C" fn ffv_mult_to_ibv_rate(m: c_int) -> c_int {
    RATES.iter().find(|x| x.1 == m).map_or(0, |x| x.0)
}

#[no_mangle]
pub extern "C" fn ffv_ibv_rate_to_mbps(r: c_int) -> c_int {
    RATES.iter().find(|x| x.0 == r).map_or(0, |x| x.2)
}

#[no_mangle]
pub extern "C" fn ffv_mbps_to_ibv_rate(m: c_int) -> c_int {
    RATES.iter().find(|x| x.2 == m).map_or(0, |x| x.0)
}

/// There is no sysfs for ff0: the usual root, and every file is missing.
#[no_mangle]
pub extern "C" fn ffv_ibv_get_sysfs_path() -> *const c_char {
    cstr(c"/sys")
}

#[no_mangle]
pub extern "C" fn ffv_ibv_read_sysfs_file(_dir: *const c_char, _file: *const c_char, _buf: *mut c_char, _size: usize) -> c_int {
    set_errno(libc::ENOENT);
    -1
}
