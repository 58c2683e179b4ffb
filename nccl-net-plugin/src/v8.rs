//! `ncclNetPlugin_v8` (NCCL 2.20–2.23): v9 with `int` message sizes, the
//! v8 properties (no flush flag, no virtual NICs, no byte limits) and no
//! `makeVDevice`.

use std::ffi::{c_int, c_void};

use crate::abi::{Logger, NcclResult, NetV8, PropsV12, PropsV8};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v8: NetV8 = NetV8 {
    name: ffi::NAME,
    init: Some(init),
    devices: Some(ffi::devices),
    get_properties: Some(get_properties),
    listen: Some(listen),
    connect: Some(connect),
    accept: Some(ffi::accept),
    reg_mr: Some(ffi::reg_mr),
    reg_mr_dma_buf: None,
    dereg_mr: Some(ffi::dereg_mr),
    isend: Some(isend),
    irecv: Some(irecv),
    iflush: Some(ffi::iflush),
    test: Some(ffi::test),
    close_send: Some(ffi::close_send),
    close_recv: Some(ffi::close_recv),
    close_listen: Some(ffi::close_listen),
    get_device_mr: None,
    irecv_consumed: None,
};

unsafe extern "C" fn init(log: Option<Logger>) -> NcclResult {
    ffi::init_legacy(log, 8)
}

fn convert(p: &PropsV12) -> PropsV8 {
    PropsV8 {
        name: p.name,
        pci_path: p.pci_path,
        guid: p.guid,
        ptr_support: p.ptr_support,
        reg_is_global: p.reg_is_global,
        speed: p.speed,
        port: p.port,
        latency: p.latency,
        max_comms: p.max_comms,
        max_recvs: p.max_recvs,
        net_device_type: p.net_device_type,
        net_device_version: p.net_device_version,
    }
}

/// # Safety
/// NCCL's contract: `props` is valid for a write.
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV8) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, convert) }
}

/// # Safety
/// As [`ffi::listen`], with the process-wide context.
pub(crate) unsafe extern "C" fn listen(dev: c_int, handle: *mut c_void, listen_comm: *mut *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::listen(std::ptr::null_mut(), dev, handle, listen_comm) }
}

/// # Safety
/// As [`ffi::connect`], with the process-wide context.
pub(crate) unsafe extern "C" fn connect(dev: c_int, handle: *mut c_void, send_comm: *mut *mut c_void, dev_comm: *mut *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::connect(std::ptr::null_mut(), dev, handle, send_comm, dev_comm) }
}

/// # Safety
/// As [`ffi::isend_sized`].
pub(crate) unsafe extern "C" fn isend(
    comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    tag: c_int,
    mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::isend_sized(comm, data, size, tag, mhandle, request) }
}

/// # Safety
/// As [`ffi::irecv_sized`].
pub(crate) unsafe extern "C" fn irecv(
    comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut c_int,
    tags: *mut c_int,
    mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::irecv_sized(comm, n, data, sizes, tags, mhandles, request) }
}
