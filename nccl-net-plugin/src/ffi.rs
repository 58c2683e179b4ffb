//! The C boundary: every entry point NCCL calls, with the newest (v12)
//! signatures. The version shims (`v8.rs` … `v12.rs`) put these functions
//! straight into their tables where the signature did not change, and adapt
//! the few that did.
//!
//! This is where the plugin's raw-pointer handling lives. Invariants:
//! - every function runs inside [`entry`]: a panic is caught and reported as
//!   `ncclInternalError`, never unwound into NCCL; every failure is logged
//!   once, with the entry point's name, through NCCL's logger;
//! - out-pointers (`*listenComm`, `*request`, …) are checked for NULL, then
//!   written exactly once; `*request` and `*sendComm`/`*recvComm` are
//!   always overwritten (NULL when there is nothing to return), whatever
//!   NCCL preset there;
//! - the `void*` values we return are table ids (`crate::table`), so a bad
//!   comm or request pointer from the caller is an error, not a crash;
//! - data buffers are only passed on to ffcore under NCCL's contract that
//!   they stay valid until the request completes or the comm is closed.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ffcore::MemKey;

use crate::abi::{self, Logger, NcclResult, PropsV12, StaticStr, LOG_INIT, LOG_NET};
use crate::logger;
use crate::net::{self, Fail, Kind};
use crate::table::Id;

/// The network's name: what `NCCL_NET=FreeFlow` selects.
pub const NAME: StaticStr = StaticStr(c"FreeFlow".as_ptr());

/// Runs one entry point: catches panics, logs failures, returns the code.
fn entry(name: &str, f: impl FnOnce() -> net::Result<()>) -> NcclResult {
    let run = || match f() {
        Ok(()) => abi::SUCCESS,
        Err(e) => {
            let line = format!("{name}: {}", e.msg);
            if e.quiet {
                logger::info(LOG_INIT | LOG_NET, &line);
            } else {
                logger::warn(LOG_NET, &line);
            }
            e.code
        }
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // Logging itself must not unwind out of here either.
        let _ = catch_unwind(|| logger::warn(LOG_NET, &format!("{name}: internal error (panic: {what})")));
        abi::INTERNAL_ERROR
    })
}

fn id(p: *mut c_void) -> Id {
    p as usize as Id
}

fn as_ptr(id: Id) -> *mut c_void {
    id as usize as *mut c_void
}

/// Writes `v` to the out-pointer `p`.
///
/// # Safety
/// `p` is NULL (refused) or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T, what: &str) -> net::Result<()> {
    if p.is_null() {
        return Err(Fail::internal(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and valid for writes by this function's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Reads element `i` of a caller's array, or `None` if the array is NULL.
///
/// # Safety
/// `p` is NULL or valid for reads of `i + 1` elements.
unsafe fn get<T: Copy>(p: *const T, i: usize) -> Option<T> {
    // SAFETY: by this function's contract.
    (!p.is_null()).then(|| unsafe { p.add(i).read() })
}

fn mem_key(mh: *mut c_void) -> net::Result<Option<MemKey>> {
    match u32::try_from(mh as usize) {
        Ok(0) => Ok(None),
        Ok(k) => Ok(Some(MemKey(k))),
        Err(_) => Err(Fail::internal(format!("{mh:?} is not a memory handle from regMr"))),
    }
}

/// A message size as NCCL passes it: `size_t` (v9+) or `int` (v8).
pub trait CSize: Copy + std::fmt::Display {
    fn to_len(self) -> Option<usize>;
}
impl CSize for usize {
    fn to_len(self) -> Option<usize> {
        Some(self)
    }
}
impl CSize for c_int {
    fn to_len(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

fn len_of<S: CSize>(s: S) -> net::Result<usize> {
    s.to_len().ok_or_else(|| Fail::new(abi::INVALID_ARGUMENT, format!("bad message size {s}")))
}

/// v11+ `init`: one context per NCCL communicator, returned in `*ctx`.
///
/// # Safety
/// `ctx` is NULL or valid for a write; `log` is NCCL's logger or None.
pub unsafe fn init_ctx(ctx: *mut *mut c_void, log: Option<Logger>, abi_version: u32) -> NcclResult {
    logger::install(log);
    entry("init", || {
        let (c, line) = net::init_context(abi_version)?;
        // SAFETY: by this function's contract.
        if let Err(e) = unsafe { put(ctx, as_ptr(c), "ctx") } {
            net::finalize(c)?;
            return Err(e);
        }
        logger::info(LOG_INIT | LOG_NET, &line);
        Ok(())
    })
}

/// v8–v10 `init`: attaches the process-wide context.
pub fn init_legacy(log: Option<Logger>, abi_version: u32) -> NcclResult {
    logger::install(log);
    entry("init", || {
        let line = net::init_legacy(abi_version)?;
        logger::info(LOG_INIT | LOG_NET, &line);
        Ok(())
    })
}

/// `devices`: one device, the router.
///
/// # Safety
/// `ndev` is NULL or valid for a write.
pub unsafe extern "C" fn devices(ndev: *mut c_int) -> NcclResult {
    // SAFETY: by this function's contract.
    entry("devices", || unsafe { put(ndev, 1, "ndev") })
}

/// `getProperties` for any layout: `convert` turns the newest into `P`.
///
/// # Safety
/// `props` is NULL or valid for a write of `P`.
pub unsafe fn get_properties<P>(dev: c_int, props: *mut P, convert: fn(&PropsV12) -> P) -> NcclResult {
    // SAFETY: by this function's contract.
    entry("getProperties", || unsafe { put(props, convert(&net::properties(dev)?), "props") })
}

/// `listen` (`ctx` NULL for v8–v10).
///
/// # Safety
/// `handle` is NULL or NCCL's `NCCL_NET_HANDLE_MAXSIZE`-byte buffer;
/// `listen_comm` is NULL or valid for a write.
pub unsafe extern "C" fn listen(ctx: *mut c_void, dev: c_int, handle: *mut c_void, listen_comm: *mut *mut c_void) -> NcclResult {
    entry("listen", || {
        if handle.is_null() || listen_comm.is_null() {
            return Err(Fail::internal("listen: NULL handle or listenComm"));
        }
        // SAFETY: non-null, NCCL_NET_HANDLE_MAXSIZE bytes by the contract.
        let buf = unsafe { &mut *(handle as *mut [u8; abi::HANDLE_MAXSIZE]) };
        let lc = net::listen(id(ctx), dev, buf)?;
        // SAFETY: non-null and writable by the contract.
        unsafe { put(listen_comm, as_ptr(lc), "listenComm") }
    })
}

/// `connect` (`ctx` NULL for v8–v10). `*send_comm` is NULL until connected;
/// the device handle is left alone (host plugin).
///
/// # Safety
/// As for [`listen`]; `handle` holds what the peer's `listen` wrote.
pub unsafe extern "C" fn connect(
    ctx: *mut c_void,
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    _dev_comm: *mut *mut c_void,
) -> NcclResult {
    entry("connect", || {
        // SAFETY: by the contract.
        unsafe { put(send_comm, std::ptr::null_mut(), "sendComm")? };
        if handle.is_null() {
            return Err(Fail::internal("connect: NULL handle"));
        }
        // SAFETY: non-null, NCCL_NET_HANDLE_MAXSIZE readable bytes by the contract.
        let buf = unsafe { &*(handle as *const [u8; abi::HANDLE_MAXSIZE]) };
        match net::connect(id(ctx), dev, buf)? {
            // SAFETY: checked non-null above.
            Some(c) => unsafe { put(send_comm, as_ptr(c), "sendComm") },
            None => Ok(()),
        }
    })
}

/// `accept`: `*recv_comm` is NULL until a peer has connected.
///
/// # Safety
/// `recv_comm` is NULL or valid for a write.
pub unsafe extern "C" fn accept(listen_comm: *mut c_void, recv_comm: *mut *mut c_void, _dev_comm: *mut *mut c_void) -> NcclResult {
    entry("accept", || {
        // SAFETY: by the contract.
        unsafe { put(recv_comm, std::ptr::null_mut(), "recvComm")? };
        match net::accept(id(listen_comm))? {
            // SAFETY: checked non-null above.
            Some(c) => unsafe { put(recv_comm, as_ptr(c), "recvComm") },
            None => Ok(()),
        }
    })
}

/// `regMr` (host memory only).
///
/// # Safety
/// `mhandle` is NULL or valid for a write.
pub unsafe extern "C" fn reg_mr(comm: *mut c_void, data: *mut c_void, size: usize, ty: c_int, mhandle: *mut *mut c_void) -> NcclResult {
    entry("regMr", || {
        let key = net::reg_mr(id(comm), data as *const u8, size, ty)?;
        // SAFETY: by the contract.
        unsafe { put(mhandle, key.0 as usize as *mut c_void, "mhandle") }
    })
}

/// `regMr` of v6 and v7 (an `int` size; a negative one is an error).
///
/// # Safety
/// `mhandle` is NULL or valid for a write.
pub unsafe extern "C" fn reg_mr_int(comm: *mut c_void, data: *mut c_void, size: c_int, ty: c_int, mhandle: *mut *mut c_void) -> NcclResult {
    match usize::try_from(size) {
        // SAFETY: same contract.
        Ok(n) => unsafe { reg_mr(comm, data, n, ty, mhandle) },
        Err(_) => entry("regMr", || Err(Fail::new(abi::INVALID_ARGUMENT, format!("bad registration size {size}")))),
    }
}

/// `deregMr`.
///
/// # Safety
/// None beyond the C types: only ids are inspected.
pub unsafe extern "C" fn dereg_mr(comm: *mut c_void, mhandle: *mut c_void) -> NcclResult {
    entry("deregMr", || match mem_key(mhandle)? {
        Some(k) => net::dereg_mr(id(comm), k),
        None => Err(Fail::internal("deregMr: NULL memory handle")),
    })
}

/// `isend` for any size type.
///
/// # Safety
/// `request` is NULL or valid for a write; `[data, data+size)` is readable
/// and unchanged until `test` reports the request done or the comm closes.
pub unsafe fn isend_sized<S: CSize>(
    comm: *mut c_void,
    data: *mut c_void,
    size: S,
    tag: c_int,
    mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    entry("isend", || {
        // SAFETY: by the contract.
        unsafe { put(request, std::ptr::null_mut(), "request")? };
        let len = len_of(size)?;
        // SAFETY: the buffer contract is ours, passed on.
        let posted = unsafe { net::post(id(comm), Kind::Send, data as *mut u8, len, net::tag(tag), mem_key(mhandle)?)? };
        match posted {
            // SAFETY: checked non-null above.
            Some(r) => unsafe { put(request, as_ptr(r), "request") },
            None => Ok(()),
        }
    })
}

/// `isend` (v10+ signature; the profiler handle is ignored).
///
/// # Safety
/// See [`isend_sized`].
pub unsafe extern "C" fn isend(
    comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    tag: c_int,
    mhandle: *mut c_void,
    _phandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { isend_sized(comm, data, size, tag, mhandle, request) }
}

/// `irecv` for any size type. One buffer (`maxRecvs` = 1).
///
/// # Safety
/// `request` is NULL or valid for a write; `data`, `sizes`, `tags`,
/// `mhandles` are NULL or hold `n` elements; `[data[0], data[0]+sizes[0])`
/// is writable and untouched until the request is done or the comm closes.
pub unsafe fn irecv_sized<S: CSize>(
    comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut S,
    tags: *mut c_int,
    mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    entry("irecv", || {
        // SAFETY: by the contract (this also clears a preset
        // NCCL_NET_OPTIONAL_RECV_COMPLETION).
        unsafe { put(request, std::ptr::null_mut(), "request")? };
        if n != 1 {
            return Err(Fail::internal(format!("irecv: {n} grouped receives, but maxRecvs is 1")));
        }
        // SAFETY: one element each, by the contract.
        let (buf, size, tag, mh) = unsafe { (get(data, 0), get(sizes, 0), get(tags, 0), get(mhandles, 0)) };
        let (Some(buf), Some(size)) = (buf, size) else {
            return Err(Fail::internal("irecv: NULL data or sizes"));
        };
        let tag = tag.map_or(ffcore::TAG_ANY, net::tag);
        let mh = mem_key(mh.unwrap_or(std::ptr::null_mut()))?;
        // SAFETY: the buffer contract is ours, passed on.
        let posted = unsafe { net::post(id(comm), Kind::Recv, buf as *mut u8, len_of(size)?, tag, mh)? };
        match posted {
            // SAFETY: checked non-null above.
            Some(r) => unsafe { put(request, as_ptr(r), "request") },
            None => Ok(()),
        }
    })
}

/// `irecv` (v10+ signature).
///
/// # Safety
/// See [`irecv_sized`].
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn irecv(
    comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut usize,
    tags: *mut c_int,
    mhandles: *mut *mut c_void,
    _phandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { irecv_sized(comm, n, data, sizes, tags, mhandles, request) }
}

/// `iflush`: host memory is coherent once `test` says done, so there is
/// nothing to flush: `*request` = NULL, which NCCL treats as complete.
///
/// # Safety
/// `request` is NULL or valid for a write.
pub unsafe extern "C" fn iflush(
    comm: *mut c_void,
    _n: c_int,
    _data: *mut *mut c_void,
    _sizes: *mut c_int,
    _mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    entry("iflush", || {
        // SAFETY: by the contract.
        unsafe { put(request, std::ptr::null_mut(), "request")? };
        net::check_recv_comm(id(comm))
    })
}

/// `test`: `*done` = 1 once complete, with the byte count in `sizes[0]`.
///
/// # Safety
/// `done` is NULL or valid for a write; `sizes` NULL or valid for one.
pub unsafe extern "C" fn test(request: *mut c_void, done: *mut c_int, sizes: *mut c_int) -> NcclResult {
    entry("test", || {
        // SAFETY: by the contract.
        unsafe { put(done, 0, "done")? };
        if let Some(n) = net::test(id(request))? {
            let n = c_int::try_from(n).map_err(|_| Fail::internal(format!("test: {n} bytes do not fit an int")))?;
            if !sizes.is_null() {
                // SAFETY: non-null, writable by the contract.
                unsafe { sizes.write(n) };
            }
            // SAFETY: checked non-null above.
            unsafe { done.write(1) };
        }
        Ok(())
    })
}

/// `closeSend`.
///
/// # Safety
/// None beyond the C types: only the id is inspected.
pub unsafe extern "C" fn close_send(comm: *mut c_void) -> NcclResult {
    entry("closeSend", || net::close(id(comm), Kind::Send))
}

/// `closeRecv`.
///
/// # Safety
/// None beyond the C types: only the id is inspected.
pub unsafe extern "C" fn close_recv(comm: *mut c_void) -> NcclResult {
    entry("closeRecv", || net::close(id(comm), Kind::Recv))
}

/// `closeListen`.
///
/// # Safety
/// None beyond the C types: only the id is inspected.
pub unsafe extern "C" fn close_listen(comm: *mut c_void) -> NcclResult {
    entry("closeListen", || net::close(id(comm), Kind::Listen))
}

/// `finalize` (v11+): ends one communicator's context.
///
/// # Safety
/// None beyond the C types: only the id is inspected.
pub unsafe extern "C" fn finalize(ctx: *mut c_void) -> NcclResult {
    entry("finalize", || net::finalize(id(ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_internal_error_and_failures_their_code() {
        assert_eq!(entry("boom", || panic!("deliberate")), abi::INTERNAL_ERROR);
        assert_eq!(entry("fail", || Err(Fail::new(abi::REMOTE_ERROR, "peer closed"))), abi::REMOTE_ERROR);
        assert_eq!(entry("fine", || Ok(())), abi::SUCCESS);
    }

    #[test]
    fn null_out_pointers_and_bad_handles_are_refused() {
        // SAFETY: NULL pointers are checked before any access; ids are only looked up.
        unsafe {
            assert_eq!(devices(std::ptr::null_mut()), abi::INTERNAL_ERROR);
            assert_eq!(test(std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()), abi::INTERNAL_ERROR);
            let mut req = std::ptr::without_provenance_mut(abi::OPTIONAL_RECV_COMPLETION);
            let mut buf = [0u8; 4];
            let mut data = buf.as_mut_ptr() as *mut c_void;
            let mut size = 4usize;
            let bogus = std::ptr::without_provenance_mut(0xdead_beef);
            assert_eq!(irecv(bogus, 1, &mut data, &mut size, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), &mut req), abi::INTERNAL_ERROR);
            assert!(req.is_null(), "*request is overwritten even on failure");
            assert_eq!(mem_key(std::ptr::without_provenance_mut(1 << 40)).unwrap_err().code, abi::INTERNAL_ERROR);
        }
    }
}
