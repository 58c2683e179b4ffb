//! `ncclNetPlugin_v6` (NCCL 2.13–2.18): v7 without device handles on
//! `connect` and `accept`, without `getDeviceMr` and `irecvConsumed`, and
//! with the v6 properties (no device type or version). NCCL of those
//! versions keeps at most 8 requests per comm in flight
//! (`NCCL_NET_MAX_REQUESTS_V6`); the plugin takes 32.

use std::ffi::{c_int, c_void};

use crate::abi::{Logger, NcclResult, NetV6, PropsV12, PropsV6};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v6: NetV6 = NetV6 {
    name: ffi::NAME,
    init: Some(init),
    devices: Some(ffi::devices),
    get_properties: Some(get_properties),
    listen: Some(crate::v8::listen),
    connect: Some(connect),
    accept: Some(accept),
    reg_mr: Some(ffi::reg_mr_int),
    reg_mr_dma_buf: None,
    dereg_mr: Some(ffi::dereg_mr),
    isend: Some(crate::v8::isend),
    irecv: Some(crate::v8::irecv),
    iflush: Some(ffi::iflush),
    test: Some(ffi::test),
    close_send: Some(ffi::close_send),
    close_recv: Some(ffi::close_recv),
    close_listen: Some(ffi::close_listen),
};

unsafe extern "C" fn init(log: Option<Logger>) -> NcclResult {
    ffi::init_legacy(log, 6)
}

fn convert(p: &PropsV12) -> PropsV6 {
    PropsV6 {
        name: p.name,
        pci_path: p.pci_path,
        guid: p.guid,
        ptr_support: p.ptr_support,
        speed: p.speed,
        port: p.port,
        latency: p.latency,
        max_comms: p.max_comms,
        max_recvs: p.max_recvs,
    }
}

/// # Safety
/// NCCL's contract: `props` is valid for a write.
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV6) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, convert) }
}

/// # Safety
/// As [`ffi::connect`], with the process-wide context and no device handle.
unsafe extern "C" fn connect(dev: c_int, handle: *mut c_void, send_comm: *mut *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::connect(std::ptr::null_mut(), dev, handle, send_comm, std::ptr::null_mut()) }
}

/// # Safety
/// As [`ffi::accept`], with no device handle.
unsafe extern "C" fn accept(listen_comm: *mut c_void, recv_comm: *mut *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::accept(listen_comm, recv_comm, std::ptr::null_mut()) }
}
