//! `ncclNetPlugin_v10` (NCCL 2.26–2.27): one process-wide `init`, no
//! context argument on `listen`/`connect`, v9 properties.

use std::ffi::{c_int, c_void};

use crate::abi::{CommConfig, Logger, NcclResult, NetV10, ProfilerCallback, PropsV9};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v10: NetV10 = NetV10 {
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
    isend: Some(ffi::isend),
    irecv: Some(ffi::irecv),
    iflush: Some(ffi::iflush),
    test: Some(ffi::test),
    close_send: Some(ffi::close_send),
    close_recv: Some(ffi::close_recv),
    close_listen: Some(ffi::close_listen),
    get_device_mr: None,
    irecv_consumed: None,
    make_vdevice: None,
};

unsafe extern "C" fn init(log: Option<Logger>, _prof: Option<ProfilerCallback>) -> NcclResult {
    ffi::init_legacy(log, 10)
}

/// # Safety
/// NCCL's contract: `props` is valid for a write.
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV9) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, crate::v9::convert) }
}

/// # Safety
/// As [`ffi::listen`], with the process-wide context.
unsafe extern "C" fn listen(dev: c_int, handle: *mut c_void, listen_comm: *mut *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::listen(std::ptr::null_mut(), dev, handle, listen_comm) }
}

/// # Safety
/// As [`ffi::connect`], with the process-wide context.
unsafe extern "C" fn connect(
    dev: c_int,
    _config: *mut CommConfig,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    dev_comm: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::connect(std::ptr::null_mut(), dev, handle, send_comm, dev_comm) }
}
