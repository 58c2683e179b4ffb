//! `ncclNetPlugin_v11` (NCCL 2.28–2.29): like v12 but with at most 4
//! devices per virtual NIC and no rail/plane ids in the properties.

use std::ffi::{c_int, c_void};

use crate::abi::{CommConfig, Logger, NcclResult, NetV11, ProfilerCallback, PropsV11, PropsV12, VDeviceProps};
use crate::ffi;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v11: NetV11 = NetV11 {
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
    unsafe { ffi::init_ctx(ctx, log, 11) }
}

/// The first four virtual-NIC members (we have one device).
pub fn vprops4(p: &PropsV12) -> VDeviceProps<4> {
    let d = &p.v_props.devs;
    VDeviceProps { ndevs: p.v_props.ndevs.min(4), devs: [d[0], d[1], d[2], d[3]] }
}

fn convert(p: &PropsV12) -> PropsV11 {
    PropsV11 {
        name: p.name,
        pci_path: p.pci_path,
        guid: p.guid,
        ptr_support: p.ptr_support,
        reg_is_global: p.reg_is_global,
        force_flush: p.force_flush,
        speed: p.speed,
        port: p.port,
        latency: p.latency,
        max_comms: p.max_comms,
        max_recvs: p.max_recvs,
        net_device_type: p.net_device_type,
        net_device_version: p.net_device_version,
        v_props: vprops4(p),
        max_p2p_bytes: p.max_p2p_bytes,
        max_coll_bytes: p.max_coll_bytes,
        max_multi_request_size: p.max_multi_request_size,
    }
}

/// # Safety
/// NCCL's contract: `props` is valid for a write.
unsafe extern "C" fn get_properties(dev: c_int, props: *mut PropsV11) -> NcclResult {
    // SAFETY: same contract.
    unsafe { ffi::get_properties(dev, props, convert) }
}
