//! `ncclNetPlugin_v12` (NCCL 2.30+): the newest ABI, which NCCL uses as is.
//! Only `init` (to record the version) and `getProperties` are adapted.

use std::ffi::{c_int, c_void};

use crate::abi::{CommConfig, Logger, NcclResult, NetV12, ProfilerCallback, PropsV12};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v12: NetV12 = NetV12 {
    name: ffi::NAME,
    init: Some(init),
    devices: Some(ffi::devices),
    get_properties: Some(get_properties),
    listen: Some(ffi::listen),
    connect: Some(ffi::connect),
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
    finalize: Some(ffi::finalize),
    set_net_attr: None,
};

/// # Safety
/// NCCL's contract: `ctx` is valid for a write.
unsafe extern "C" fn init(
    ctx: *mut *mut c_void,
    _comm_id: u64,
    _config: *mut CommConfig,
    log: Option<Logger>,
    _prof: Option<ProfilerCallback>,
) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::init_ctx(ctx, log, 12) }
}

/// # Safety
/// NCCL's contract: `props` is valid for a write.
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV12) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, |p| *p) }
}
