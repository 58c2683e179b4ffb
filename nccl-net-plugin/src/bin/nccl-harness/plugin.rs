//! Loading the plugin as NCCL does, and one version-independent way to
//! call it.
//!
//! `dlopen(path, RTLD_NOW | RTLD_LOCAL)` then `dlsym("ncclNetPlugin_vN")`
//! (src/plugin/plugin_open.cc and src/plugin/net/net_vN.cc in NCCL). The
//! methods below adapt each version's signatures the way NCCL's own
//! wrappers do (int sizes up to v8, no device handles in v6, no context
//! before v11, ...).

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::abi::*;

/// The ABI versions the plugin exports, newest first (NCCL's search order).
pub const VERSIONS: [u32; 7] = [12, 11, 10, 9, 8, 7, 6];

/// A plugin call that did not return ncclSuccess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub func: &'static str,
    pub code: c_int,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = match self.code {
            SYSTEM_ERROR => "ncclSystemError",
            INTERNAL_ERROR => "ncclInternalError",
            INVALID_ARGUMENT => "ncclInvalidArgument",
            INVALID_USAGE => "ncclInvalidUsage",
            REMOTE_ERROR => "ncclRemoteError",
            _ => "?",
        };
        write!(f, "{} returned {} ({name})", self.func, self.code)
    }
}

impl std::error::Error for CallError {}

pub type R<T> = Result<T, CallError>;

fn check(func: &'static str, code: c_int) -> R<()> {
    if code == SUCCESS {
        Ok(())
    } else {
        Err(CallError { func, code })
    }
}

/// An opaque value the plugin returned (comm, request, memory handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P(pub *mut c_void);
// SAFETY: plugin values are opaque tokens; the plugin is thread-safe across
// NCCL's service and progress threads (that is what we test).
unsafe impl Send for P {}
unsafe impl Sync for P {}

impl P {
    pub const NULL: P = P(std::ptr::null_mut());
    fn opt(self) -> Option<P> {
        (!self.0.is_null()).then_some(self)
    }
}

/// What NCCL reads from getProperties, in every version.
#[derive(Debug, Clone)]
pub struct Props {
    pub name: String,
    pub pci_path_null: bool,
    pub ptr_support: c_int,
    pub speed: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    /// v9+ only.
    pub max_p2p_bytes: Option<usize>,
    pub max_coll_bytes: Option<usize>,
}

#[derive(Clone, Copy)]
enum Table {
    V6(&'static NetV6),
    V7(&'static NetV7),
    V8(&'static NetV8),
    V9(&'static NetV9),
    V10(&'static NetV10),
    V11(&'static NetV11),
    V12(&'static NetV12),
}

/// Picks a function pointer that has the same type in every version.
macro_rules! common {
    ($t:expr, $f:ident) => {
        match $t {
            Table::V6(t) => t.$f,
            Table::V7(t) => t.$f,
            Table::V8(t) => t.$f,
            Table::V9(t) => t.$f,
            Table::V10(t) => t.$f,
            Table::V11(t) => t.$f,
            Table::V12(t) => t.$f,
        }
        .expect(concat!(stringify!($f), " is NULL"))
    };
}

/// What NCCL may leave in an out-pointer before a call
/// (`NCCL_NET_OPTIONAL_RECV_COMPLETION` for irecv); the plugin must overwrite it.
const SENTINEL: *mut c_void = std::ptr::without_provenance_mut(OPTIONAL_RECV_COMPLETION);

/// One loaded plugin, at one ABI version, with its (v11+) context.
pub struct Plugin {
    table: Table,
    ctx: P,
    // Invariant: `table` points into this library, which is dropped last
    // (and the plugin is linked -z nodelete anyway).
    _lib: Library,
}

// SAFETY: the table is immutable data and the plugin's entry points are
// thread-safe by contract; see `P`.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

impl Plugin {
    /// `dlopen` + `dlsym("ncclNetPlugin_v{version}")`, as NCCL does.
    pub fn load(path: &Path, version: u32) -> Result<Plugin, String> {
        // SAFETY: loading runs the library's initializers; the plugin has
        // no constructors beyond Rust's std runtime.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| format!("dlopen {}: {e}", path.display()))?;
        let sym = format!("ncclNetPlugin_v{version}\0");
        // SAFETY: the symbol is a data object of the documented type (NCCL
        // reads it the same way); it lives as long as the library.
        let table = unsafe {
            let addr: *const c_void = *lib.get::<*const c_void>(sym.as_bytes()).map_err(|e| format!("dlsym {sym}: {e}"))?;
            match version {
                6 => Table::V6(&*(addr as *const NetV6)),
                7 => Table::V7(&*(addr as *const NetV7)),
                8 => Table::V8(&*(addr as *const NetV8)),
                9 => Table::V9(&*(addr as *const NetV9)),
                10 => Table::V10(&*(addr as *const NetV10)),
                11 => Table::V11(&*(addr as *const NetV11)),
                12 => Table::V12(&*(addr as *const NetV12)),
                _ => return Err(format!("ABI version {version} is not one we drive")),
            }
        };
        Ok(Plugin { table, ctx: P::NULL, _lib: lib })
    }

    /// The table's `name`.
    pub fn name(&self) -> String {
        let StaticStr(p) = match self.table {
            Table::V6(t) => t.name,
            Table::V7(t) => t.name,
            Table::V8(t) => t.name,
            Table::V9(t) => t.name,
            Table::V10(t) => t.name,
            Table::V11(t) => t.name,
            Table::V12(t) => t.name,
        };
        // SAFETY: NCCL's contract: a NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// Which optional entries are present: (regMrDmaBuf, iflush, finalize,
    /// getDeviceMr, irecvConsumed, makeVDevice, setNetAttr).
    pub fn optional_entries(&self) -> [bool; 7] {
        let (dma, flush, dmr, cons) = match self.table {
            Table::V6(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), false, false),
            Table::V7(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
            Table::V8(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
            Table::V9(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
            Table::V10(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
            Table::V11(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
            Table::V12(t) => (t.reg_mr_dma_buf.is_some(), t.iflush.is_some(), t.get_device_mr.is_some(), t.irecv_consumed.is_some()),
        };
        let (fin, vdev, attr) = match self.table {
            Table::V6(_) | Table::V7(_) | Table::V8(_) => (false, false, false),
            Table::V9(t) => (false, t.make_vdevice.is_some(), false),
            Table::V10(t) => (false, t.make_vdevice.is_some(), false),
            Table::V11(t) => (t.finalize.is_some(), t.make_vdevice.is_some(), t.set_net_attr.is_some()),
            Table::V12(t) => (t.finalize.is_some(), t.make_vdevice.is_some(), t.set_net_attr.is_some()),
        };
        [dma, flush, fin, dmr, cons, vdev, attr]
    }

    /// `init`, with our logger. For v11+ this is one communicator's context.
    pub fn init(&mut self) -> R<()> {
        let log = Some(logger());
        let mut config = CommConfig { traffic_class: -1 };
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointers and config; the logger is ours.
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.init.unwrap()(log),
                Table::V7(t) => t.init.unwrap()(log),
                Table::V8(t) => t.init.unwrap()(log),
                Table::V9(t) => t.init.unwrap()(log),
                Table::V10(t) => t.init.unwrap()(log, None),
                Table::V11(t) => t.init.unwrap()(&mut ctx, 0x1234, &mut config, log, None),
                Table::V12(t) => t.init.unwrap()(&mut ctx, 0x1234, &mut config, log, None),
            }
        };
        check("init", code)?;
        self.ctx = P(ctx);
        Ok(())
    }

    /// v11+ `finalize` (a no-op before v11, as in NCCL).
    pub fn finalize(&mut self) -> R<()> {
        let ctx = std::mem::replace(&mut self.ctx, P::NULL);
        self.finalize_ctx(ctx)
    }

    /// `finalize` on any value (for bad-input tests).
    pub fn finalize_ctx(&self, ctx: P) -> R<()> {
        // SAFETY: the plugin only inspects the value.
        let code = unsafe {
            match self.table {
                Table::V11(t) => t.finalize.unwrap()(ctx.0),
                Table::V12(t) => t.finalize.unwrap()(ctx.0),
                _ => SUCCESS,
            }
        };
        check("finalize", code)
    }

    pub fn devices(&self) -> R<c_int> {
        let mut n = -1;
        // SAFETY: valid out-pointer.
        check("devices", unsafe { common!(self.table, devices)(&mut n) })?;
        Ok(n)
    }

    pub fn properties(&self, dev: c_int) -> R<Props> {
        // SAFETY: each call gets a writable struct of its version's layout;
        // the strings it returns are NULL or NUL-terminated.
        unsafe {
            macro_rules! props {
                ($t:expr, $ty:ty, $extra:expr, $device_type:expr) => {{
                    let mut p = std::mem::MaybeUninit::<$ty>::zeroed();
                    check("getProperties", $t.get_properties.unwrap()(dev, p.as_mut_ptr()))?;
                    let p = p.assume_init();
                    let extra: fn(&$ty) -> (Option<usize>, Option<usize>) = $extra;
                    let (p2p, coll) = extra(&p);
                    let device_type: fn(&$ty) -> c_int = $device_type;
                    Props {
                        name: if p.name.is_null() { String::new() } else { CStr::from_ptr(p.name).to_string_lossy().into_owned() },
                        pci_path_null: p.pci_path.is_null(),
                        ptr_support: p.ptr_support,
                        speed: p.speed,
                        latency: p.latency,
                        max_comms: p.max_comms,
                        max_recvs: p.max_recvs,
                        net_device_type: device_type(&p),
                        max_p2p_bytes: p2p,
                        max_coll_bytes: coll,
                    }
                }};
            }
            Ok(match self.table {
                // (v6 has no device type: NCCL takes it as HOST.)
                Table::V6(t) => props!(t, PropsV6, |_| (None, None), |_| DEVICE_HOST),
                Table::V7(t) => props!(t, PropsV7, |_| (None, None), |p| p.net_device_type),
                Table::V8(t) => props!(t, PropsV8, |_| (None, None), |p| p.net_device_type),
                Table::V9(t) => props!(t, PropsV9, |p| (Some(p.max_p2p_bytes), Some(p.max_coll_bytes)), |p| p.net_device_type),
                Table::V10(t) => props!(t, PropsV9, |p| (Some(p.max_p2p_bytes), Some(p.max_coll_bytes)), |p| p.net_device_type),
                Table::V11(t) => props!(t, PropsV11, |p| (Some(p.max_p2p_bytes), Some(p.max_coll_bytes)), |p| p.net_device_type),
                Table::V12(t) => props!(t, PropsV12, |p| (Some(p.max_p2p_bytes), Some(p.max_coll_bytes)), |p| p.net_device_type),
            })
        }
    }

    /// `listen` on `dev`: the 128-byte handle and the listen comm.
    pub fn listen(&self, dev: c_int) -> R<([u8; HANDLE_MAXSIZE], P)> {
        let mut handle = [0xa5u8; HANDLE_MAXSIZE];
        let h = handle.as_mut_ptr() as *mut c_void;
        let mut lc = std::ptr::null_mut();
        // SAFETY: a 128-byte handle buffer and a valid out-pointer.
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.listen.unwrap()(dev, h, &mut lc),
                Table::V7(t) => t.listen.unwrap()(dev, h, &mut lc),
                Table::V8(t) => t.listen.unwrap()(dev, h, &mut lc),
                Table::V9(t) => t.listen.unwrap()(dev, h, &mut lc),
                Table::V10(t) => t.listen.unwrap()(dev, h, &mut lc),
                Table::V11(t) => t.listen.unwrap()(self.ctx.0, dev, h, &mut lc),
                Table::V12(t) => t.listen.unwrap()(self.ctx.0, dev, h, &mut lc),
            }
        };
        check("listen", code)?;
        Ok((handle, P(lc)))
    }

    /// One `connect` try: `None` means "call again with the same handle".
    pub fn connect(&self, dev: c_int, handle: &[u8; HANDLE_MAXSIZE]) -> R<Option<P>> {
        let mut handle = *handle;
        let h = handle.as_mut_ptr() as *mut c_void;
        let mut sc = SENTINEL; // must be overwritten
        let mut dev_handle: *mut c_void = std::ptr::null_mut();
        let mut config = CommConfig { traffic_class: -1 };
        // SAFETY: as NCCL calls it: a 128-byte handle, out-pointers, and a
        // NULL device handle (host plugin).
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.connect.unwrap()(dev, h, &mut sc),
                Table::V7(t) => t.connect.unwrap()(dev, h, &mut sc, &mut dev_handle),
                Table::V8(t) => t.connect.unwrap()(dev, h, &mut sc, &mut dev_handle),
                Table::V9(t) => t.connect.unwrap()(dev, h, &mut sc, &mut dev_handle),
                Table::V10(t) => t.connect.unwrap()(dev, &mut config, h, &mut sc, &mut dev_handle),
                Table::V11(t) => t.connect.unwrap()(self.ctx.0, dev, h, &mut sc, &mut dev_handle),
                Table::V12(t) => t.connect.unwrap()(self.ctx.0, dev, h, &mut sc, &mut dev_handle),
            }
        };
        check("connect", code)?;
        assert!(dev_handle.is_null(), "a host plugin must leave the device handle alone");
        assert_ne!(sc, SENTINEL, "connect did not overwrite *sendComm");
        Ok(P(sc).opt())
    }

    /// One `accept` try.
    pub fn accept(&self, lc: P) -> R<Option<P>> {
        let mut rc = SENTINEL;
        let mut dev_handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointers.
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.accept.unwrap()(lc.0, &mut rc),
                Table::V7(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
                Table::V8(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
                Table::V9(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
                Table::V10(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
                Table::V11(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
                Table::V12(t) => t.accept.unwrap()(lc.0, &mut rc, &mut dev_handle),
            }
        };
        check("accept", code)?;
        assert!(dev_handle.is_null(), "a host plugin must leave the device handle alone");
        assert_ne!(rc, SENTINEL, "accept did not overwrite *recvComm");
        Ok(P(rc).opt())
    }

    pub fn reg_mr(&self, comm: P, data: *const u8, len: usize, ty: c_int) -> R<P> {
        let mut mh = std::ptr::null_mut();
        let d = data as *mut c_void;
        let int = || c_int::try_from(len).expect("v6 and v7 registration sizes are ints");
        // SAFETY: the plugin records the range; it does not access it here.
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.reg_mr.unwrap()(comm.0, d, int(), ty, &mut mh),
                Table::V7(t) => t.reg_mr.unwrap()(comm.0, d, int(), ty, &mut mh),
                Table::V8(t) => t.reg_mr.unwrap()(comm.0, d, len, ty, &mut mh),
                Table::V9(t) => t.reg_mr.unwrap()(comm.0, d, len, ty, &mut mh),
                Table::V10(t) => t.reg_mr.unwrap()(comm.0, d, len, ty, &mut mh),
                Table::V11(t) => t.reg_mr.unwrap()(comm.0, d, len, ty, &mut mh),
                Table::V12(t) => t.reg_mr.unwrap()(comm.0, d, len, ty, &mut mh),
            }
        };
        check("regMr", code)?;
        Ok(P(mh))
    }

    pub fn dereg_mr(&self, comm: P, mh: P) -> R<()> {
        // SAFETY: ids only.
        check("deregMr", unsafe { common!(self.table, dereg_mr)(comm.0, mh.0) })
    }

    /// `isend`; `None` = the plugin cannot post now.
    ///
    /// # Safety
    /// `[data, data+len)` stays readable until the request completes or the
    /// comm is closed.
    pub unsafe fn isend(&self, comm: P, data: *const u8, len: usize, tag: c_int, mh: P) -> R<Option<P>> {
        let d = data as *mut c_void;
        let mut req = SENTINEL; // must be overwritten
        // SAFETY: the buffer by this function's contract; valid out-pointer.
        let code = unsafe {
            let int = || c_int::try_from(len).expect("sizes up to v8 are ints");
            match self.table {
                Table::V6(t) => t.isend.unwrap()(comm.0, d, int(), tag, mh.0, &mut req),
                Table::V7(t) => t.isend.unwrap()(comm.0, d, int(), tag, mh.0, &mut req),
                Table::V8(t) => t.isend.unwrap()(comm.0, d, int(), tag, mh.0, &mut req),
                Table::V9(t) => t.isend.unwrap()(comm.0, d, len, tag, mh.0, &mut req),
                Table::V10(t) => t.isend.unwrap()(comm.0, d, len, tag, mh.0, std::ptr::null_mut(), &mut req),
                Table::V11(t) => t.isend.unwrap()(comm.0, d, len, tag, mh.0, std::ptr::null_mut(), &mut req),
                Table::V12(t) => t.isend.unwrap()(comm.0, d, len, tag, mh.0, std::ptr::null_mut(), &mut req),
            }
        };
        assert_ne!(req, SENTINEL, "isend did not overwrite *request");
        check("isend", code)?;
        Ok(P(req).opt())
    }

    /// `irecv` of one buffer (`n` is passed through, for bad-input tests).
    /// `*request` is preset to NCCL_NET_OPTIONAL_RECV_COMPLETION, as NCCL does.
    ///
    /// # Safety
    /// `[data, data+cap)` stays writable and untouched until the request
    /// completes or the comm is closed.
    pub unsafe fn irecv_n(&self, comm: P, n: c_int, data: *mut u8, cap: usize, tag: c_int, mh: P) -> R<Option<P>> {
        let mut datas = [data as *mut c_void; 2];
        let mut sizes = [cap; 2];
        let mut isizes = [c_int::try_from(cap).unwrap_or(c_int::MAX); 2];
        let mut tags = [tag; 2];
        let mut mhs = [mh.0; 2];
        let mut phs = [std::ptr::null_mut(); 2];
        let mut req = SENTINEL;
        let (d, s, is, tg, m, ph) =
            (datas.as_mut_ptr(), sizes.as_mut_ptr(), isizes.as_mut_ptr(), tags.as_mut_ptr(), mhs.as_mut_ptr(), phs.as_mut_ptr());
        // SAFETY: arrays of 2 >= n elements (n <= 2 in our calls); the
        // buffer by this function's contract; valid out-pointer.
        let code = unsafe {
            match self.table {
                Table::V6(t) => t.irecv.unwrap()(comm.0, n, d, is, tg, m, &mut req),
                Table::V7(t) => t.irecv.unwrap()(comm.0, n, d, is, tg, m, &mut req),
                Table::V8(t) => t.irecv.unwrap()(comm.0, n, d, is, tg, m, &mut req),
                Table::V9(t) => t.irecv.unwrap()(comm.0, n, d, s, tg, m, &mut req),
                Table::V10(t) => t.irecv.unwrap()(comm.0, n, d, s, tg, m, ph, &mut req),
                Table::V11(t) => t.irecv.unwrap()(comm.0, n, d, s, tg, m, ph, &mut req),
                Table::V12(t) => t.irecv.unwrap()(comm.0, n, d, s, tg, m, ph, &mut req),
            }
        };
        assert_ne!(req, SENTINEL, "irecv did not overwrite *request");
        check("irecv", code)?;
        Ok(P(req).opt())
    }

    /// # Safety
    /// As [`Plugin::irecv_n`].
    pub unsafe fn irecv(&self, comm: P, data: *mut u8, cap: usize, tag: c_int, mh: P) -> R<Option<P>> {
        // SAFETY: same contract.
        unsafe { self.irecv_n(comm, 1, data, cap, tag, mh) }
    }

    /// `iflush`: `Some(request)` if the plugin needs one tested.
    pub fn iflush(&self, comm: P, data: *mut u8, size: c_int, mh: P) -> R<Option<P>> {
        let mut d = data as *mut c_void;
        let mut s = size;
        let mut m = mh.0;
        let mut req = SENTINEL;
        // SAFETY: one-element arrays and a valid out-pointer.
        check("iflush", unsafe { common!(self.table, iflush)(comm.0, 1, &mut d, &mut s, &mut m, &mut req) })?;
        Ok(P(req).opt())
    }

    /// `test`: `Some(size)` once done.
    pub fn test(&self, req: P) -> R<Option<usize>> {
        let mut done: c_int = -1;
        let mut size: c_int = -1;
        // SAFETY: valid out-pointers.
        check("test", unsafe { common!(self.table, test)(req.0, &mut done, &mut size) })?;
        match done {
            0 => Ok(None),
            1 => Ok(Some(usize::try_from(size).expect("test reported a negative size"))),
            d => panic!("test set done={d}"),
        }
    }

    pub fn close_send(&self, comm: P) -> R<()> {
        // SAFETY: ids only.
        check("closeSend", unsafe { common!(self.table, close_send)(comm.0) })
    }

    pub fn close_recv(&self, comm: P) -> R<()> {
        // SAFETY: ids only.
        check("closeRecv", unsafe { common!(self.table, close_recv)(comm.0) })
    }

    pub fn close_listen(&self, comm: P) -> R<()> {
        // SAFETY: ids only.
        check("closeListen", unsafe { common!(self.table, close_listen)(comm.0) })
    }

    pub fn ctx(&self) -> P {
        self.ctx
    }
}

// ---------------------------------------------------------------- logger --

/// Lines the plugin logged, by level (WARN, INFO, other).
pub static WARNS: AtomicUsize = AtomicUsize::new(0);
pub static INFOS: AtomicUsize = AtomicUsize::new(0);
/// The last lines logged (for checks).
pub static LINES: Mutex<Vec<(c_int, String)>> = Mutex::new(Vec::new());

/// NCCL's logger, as the harness provides it.
///
/// The plugin always calls its logger as `f(level, flags, file, line, "%s",
/// text)`. Defining a C-variadic function needs nightly Rust, so this one
/// takes those six arguments as fixed parameters: on the x86-64 System V and
/// AArch64 Linux ABIs the first six integer/pointer arguments of a variadic
/// call travel in the same registers as those of a fixed call. It checks the
/// format string before trusting the sixth argument.
unsafe extern "C" fn log_fn(level: c_int, _flags: c_ulong, _file: *const c_char, _line: c_int, fmt: *const c_char, text: *const c_char) {
    // SAFETY: the plugin passes NUL-terminated strings (checked: "%s" first).
    let text = unsafe {
        if fmt.is_null() || CStr::from_ptr(fmt) != c"%s" {
            "<log call with an unexpected format>".to_string()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    let tag = match level {
        LOG_WARN => {
            WARNS.fetch_add(1, Ordering::Relaxed);
            "WARN"
        }
        LOG_INFO => {
            INFOS.fetch_add(1, Ordering::Relaxed);
            "INFO"
        }
        _ => "TRACE",
    };
    if level <= LOG_INFO {
        eprintln!("[plugin {tag}] {text}");
    }
    let mut lines = LINES.lock().unwrap_or_else(|p| p.into_inner());
    lines.push((level, text));
    let excess = lines.len().saturating_sub(1000);
    lines.drain(..excess);
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the harness logger relies on the x86-64 / AArch64 calling conventions");

fn logger() -> Logger {
    type Fixed = unsafe extern "C" fn(c_int, c_ulong, *const c_char, c_int, *const c_char, *const c_char);
    // SAFETY: see `log_fn`: for the calls the plugin makes, the variadic
    // and the fixed six-argument conventions coincide on these targets.
    unsafe { std::mem::transmute::<Fixed, Logger>(log_fn) }
}

/// Forgets what was logged so far; returns the lines.
pub fn take_log() -> Vec<(c_int, String)> {
    WARNS.store(0, Ordering::Relaxed);
    INFOS.store(0, Ordering::Relaxed);
    std::mem::take(&mut *LINES.lock().unwrap_or_else(|p| p.into_inner()))
}
