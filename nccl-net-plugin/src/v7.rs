//! `ncclNetPlugin_v7` (NCCL 2.19): v8 with an `int` size in `regMr` and
//! the v7 properties (no `regIsGlobal`).

use std::ffi::c_int;

use crate::abi::{Logger, NcclResult, NetV7, PropsV12, PropsV7};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v7: NetV7 = NetV7 {
    name: ffi::NAME,
    init: Some(init),
    devices: Some(ffi::devices),
    get_properties: Some(get_properties),
    listen: Some(crate::v8::listen),
    connect: Some(crate::v8::connect),
    accept: Some(ffi::accept),
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
    get_device_mr: None,
    irecv_consumed: None,
};

unsafe extern "C" fn init(log: Option<Logger>) -> NcclResult {
    ffi::init_legacy(log, 7)
}

fn convert(p: &PropsV12) -> PropsV7 {
    PropsV7 {
        name: p.name,
        pci_path: p.pci_path,
        guid: p.guid,
        ptr_support: p.ptr_support,
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
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV7) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, convert) }
}
