//! The NCCL net plugin ABI, versions 6 to 12, as `#[repr(C)]` Rust types.
//!
//! Written from the interface facts in NCCL's headers
//! (`src/include/plugin/net/net_v{6..12}.h`, `nccl_common.h`, `nccl_net.h`;
//! see /work/shared/reference/nccl-net.md §1). Sizes and offsets are checked
//! by the tests at the bottom against the documented x86_64 layouts.
//!
//! Pure data: no code, no dependencies. The plugin uses it to define its
//! exported tables, and the harness (`src/bin/nccl-harness.rs`) includes the
//! same file to read them back after `dlopen`.

#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_ulong, c_void};

/// `ncclResult_t`.
pub type NcclResult = c_int;
pub const SUCCESS: NcclResult = 0;
pub const SYSTEM_ERROR: NcclResult = 2;
pub const INTERNAL_ERROR: NcclResult = 3;
pub const INVALID_ARGUMENT: NcclResult = 4;
pub const INVALID_USAGE: NcclResult = 5;
pub const REMOTE_ERROR: NcclResult = 6;

/// `ncclDebugLogLevel` values.
pub const LOG_WARN: c_int = 2;
pub const LOG_INFO: c_int = 3;
pub const LOG_TRACE: c_int = 5;
/// `ncclDebugLogSubSys` flags.
pub const LOG_INIT: c_ulong = 0x1;
pub const LOG_NET: c_ulong = 0x10;

/// `ncclDebugLogger_t`: `(level, flags, file, line, fmt, ...)`.
pub type Logger = unsafe extern "C" fn(c_int, c_ulong, *const c_char, c_int, *const c_char, ...);
/// `ncclProfilerCallback_t` (ignored by this plugin).
pub type ProfilerCallback = unsafe extern "C" fn(*mut *mut c_void, c_int, *mut c_void, i64, *mut c_void) -> NcclResult;

pub const HANDLE_MAXSIZE: usize = 128;
pub const PTR_HOST: c_int = 0x1;
pub const PTR_CUDA: c_int = 0x2;
/// `NCCL_NET_DEVICE_HOST`: no device offload.
pub const DEVICE_HOST: c_int = 0;
/// The value NCCL may preset in `*request` before `irecv` (a hint only).
pub const OPTIONAL_RECV_COMPLETION: usize = 0x1;
/// `NCCL_NET_MAX_REQUESTS`: requests a comm must accept at once.
pub const MAX_REQUESTS: usize = 32;
/// `MAX_NET_SIZE` and `MAX_COLLNET_SIZE`: NCCL's defaults for the byte limits.
pub const MAX_NET_SIZE: usize = 1 << 30;
pub const MAX_COLLNET_SIZE: usize = 512 << 20;

/// A pointer to static, NUL-terminated text (the table's `name`).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct StaticStr(pub *const c_char);
// SAFETY: it only ever points at immutable 'static data.
unsafe impl Sync for StaticStr {}
unsafe impl Send for StaticStr {}

/// `ncclNetCommConfig_v10..v12_t`.
#[repr(C)]
pub struct CommConfig {
    pub traffic_class: c_int,
}

/// `ncclNetVDeviceProps_v9..v11_t` (`NCCL_NET_MAX_DEVS_PER_NIC_V11` = 4) and `_v12_t` (8).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VDeviceProps<const N: usize> {
    pub ndevs: c_int,
    pub devs: [c_int; N],
}

/// `ncclNetProperties_v6_t` (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV6 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
}

/// `ncclNetProperties_v7_t` (56 bytes): v8 without `regIsGlobal`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV7 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
}

/// `ncclNetProperties_v8_t` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV8 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub reg_is_global: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
}

/// `ncclNetProperties_v9_t` and `_v10_t` (104 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV9 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub reg_is_global: c_int,
    pub force_flush: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
    pub v_props: VDeviceProps<4>,
    pub max_p2p_bytes: usize,
    pub max_coll_bytes: usize,
}

/// `ncclNetProperties_v11_t` (112 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV11 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub reg_is_global: c_int,
    pub force_flush: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
    pub v_props: VDeviceProps<4>,
    pub max_p2p_bytes: usize,
    pub max_coll_bytes: usize,
    pub max_multi_request_size: c_int,
}

/// `ncclNetProperties_v12_t` (128 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsV12 {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub reg_is_global: c_int,
    pub force_flush: c_int,
    pub speed: c_int,
    pub port: c_int,
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
    pub v_props: VDeviceProps<8>,
    pub max_p2p_bytes: usize,
    pub max_coll_bytes: usize,
    pub max_multi_request_size: c_int,
    pub rail_id: i16,
    pub plane_id: i16,
}

type Ptr = *mut c_void;
type PtrPtr = *mut *mut c_void;
/// `ncclNetDeviceHandle_vN_t**`: host-only plugins leave it alone.
type DevHandlePtr = *mut *mut c_void;

// Function pointer types shared by several versions.
pub type DevicesFn = unsafe extern "C" fn(ndev: *mut c_int) -> NcclResult;
pub type AcceptFn = unsafe extern "C" fn(listen_comm: Ptr, recv_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult;
pub type RegMrFn = unsafe extern "C" fn(comm: Ptr, data: Ptr, size: usize, ty: c_int, mhandle: PtrPtr) -> NcclResult;
/// `regMr` of v6 and v7: an `int` size.
pub type RegMrIntFn = unsafe extern "C" fn(comm: Ptr, data: Ptr, size: c_int, ty: c_int, mhandle: PtrPtr) -> NcclResult;
/// `isend` and `irecv` with `int` sizes (v6 to v8).
pub type IsendIntFn = unsafe extern "C" fn(comm: Ptr, data: Ptr, size: c_int, tag: c_int, mh: Ptr, request: PtrPtr) -> NcclResult;
pub type IrecvIntFn = unsafe extern "C" fn(
    comm: Ptr,
    n: c_int,
    data: PtrPtr,
    sizes: *mut c_int,
    tags: *mut c_int,
    mhandles: PtrPtr,
    request: PtrPtr,
) -> NcclResult;
pub type RegMrDmaBufFn =
    unsafe extern "C" fn(comm: Ptr, data: Ptr, size: usize, ty: c_int, offset: u64, fd: c_int, mhandle: PtrPtr) -> NcclResult;
pub type DeregMrFn = unsafe extern "C" fn(comm: Ptr, mhandle: Ptr) -> NcclResult;
pub type IflushFn = unsafe extern "C" fn(
    recv_comm: Ptr,
    n: c_int,
    data: PtrPtr,
    sizes: *mut c_int,
    mhandles: PtrPtr,
    request: PtrPtr,
) -> NcclResult;
pub type TestFn = unsafe extern "C" fn(request: Ptr, done: *mut c_int, sizes: *mut c_int) -> NcclResult;
pub type CloseFn = unsafe extern "C" fn(comm: Ptr) -> NcclResult;
pub type GetDeviceMrFn = unsafe extern "C" fn(comm: Ptr, mhandle: Ptr, dptr: PtrPtr) -> NcclResult;
pub type IrecvConsumedFn = unsafe extern "C" fn(recv_comm: Ptr, n: c_int, request: Ptr) -> NcclResult;
pub type ListenLegacyFn = unsafe extern "C" fn(dev: c_int, handle: Ptr, listen_comm: PtrPtr) -> NcclResult;
pub type ListenCtxFn = unsafe extern "C" fn(ctx: Ptr, dev: c_int, handle: Ptr, listen_comm: PtrPtr) -> NcclResult;
pub type IsendSizeFn = unsafe extern "C" fn(comm: Ptr, data: Ptr, size: usize, tag: c_int, mh: Ptr, request: PtrPtr) -> NcclResult;
pub type IsendPhFn =
    unsafe extern "C" fn(comm: Ptr, data: Ptr, size: usize, tag: c_int, mh: Ptr, phandle: Ptr, request: PtrPtr) -> NcclResult;
pub type IrecvSizeFn = unsafe extern "C" fn(
    comm: Ptr,
    n: c_int,
    data: PtrPtr,
    sizes: *mut usize,
    tags: *mut c_int,
    mhandles: PtrPtr,
    request: PtrPtr,
) -> NcclResult;
pub type IrecvPhFn = unsafe extern "C" fn(
    comm: Ptr,
    n: c_int,
    data: PtrPtr,
    sizes: *mut usize,
    tags: *mut c_int,
    mhandles: PtrPtr,
    phandles: PtrPtr,
    request: PtrPtr,
) -> NcclResult;
pub type MakeVDeviceFn<const N: usize> = unsafe extern "C" fn(d: *mut c_int, props: *mut VDeviceProps<N>) -> NcclResult;

/// `ncclNet_v6_t` (17 pointers, 136 bytes): no device handles, no
/// `getDeviceMr` or `irecvConsumed`.
#[repr(C)]
pub struct NetV6 {
    pub name: StaticStr,
    pub init: Option<unsafe extern "C" fn(log: Option<Logger>) -> NcclResult>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV6) -> NcclResult>,
    pub listen: Option<ListenLegacyFn>,
    pub connect: Option<unsafe extern "C" fn(dev: c_int, handle: Ptr, send_comm: PtrPtr) -> NcclResult>,
    pub accept: Option<unsafe extern "C" fn(listen_comm: Ptr, recv_comm: PtrPtr) -> NcclResult>,
    pub reg_mr: Option<RegMrIntFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendIntFn>,
    pub irecv: Option<IrecvIntFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
}

/// `ncclNet_v7_t` (19 pointers, 152 bytes): v8 with an `int` size in `regMr`.
#[repr(C)]
pub struct NetV7 {
    pub name: StaticStr,
    pub init: Option<unsafe extern "C" fn(log: Option<Logger>) -> NcclResult>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV7) -> NcclResult>,
    pub listen: Option<ListenLegacyFn>,
    pub connect: Option<unsafe extern "C" fn(dev: c_int, handle: Ptr, send_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrIntFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendIntFn>,
    pub irecv: Option<IrecvIntFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
}

/// `ncclNet_v8_t` (19 pointers, 152 bytes).
#[repr(C)]
pub struct NetV8 {
    pub name: StaticStr,
    pub init: Option<unsafe extern "C" fn(log: Option<Logger>) -> NcclResult>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV8) -> NcclResult>,
    pub listen: Option<ListenLegacyFn>,
    pub connect: Option<unsafe extern "C" fn(dev: c_int, handle: Ptr, send_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendIntFn>,
    pub irecv: Option<IrecvIntFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
}

/// `ncclNet_v9_t` (20 pointers, 160 bytes).
#[repr(C)]
pub struct NetV9 {
    pub name: StaticStr,
    pub init: Option<unsafe extern "C" fn(log: Option<Logger>) -> NcclResult>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV9) -> NcclResult>,
    pub listen: Option<ListenLegacyFn>,
    pub connect: Option<unsafe extern "C" fn(dev: c_int, handle: Ptr, send_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendSizeFn>,
    pub irecv: Option<IrecvSizeFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
    pub make_vdevice: Option<MakeVDeviceFn<4>>,
}

/// `ncclNet_v10_t` (20 pointers, 160 bytes).
#[repr(C)]
pub struct NetV10 {
    pub name: StaticStr,
    pub init: Option<unsafe extern "C" fn(log: Option<Logger>, prof: Option<ProfilerCallback>) -> NcclResult>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV9) -> NcclResult>,
    pub listen: Option<ListenLegacyFn>,
    pub connect: Option<
        unsafe extern "C" fn(dev: c_int, config: *mut CommConfig, handle: Ptr, send_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult,
    >,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendPhFn>,
    pub irecv: Option<IrecvPhFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
    pub make_vdevice: Option<MakeVDeviceFn<4>>,
}

/// `init` of v11 and v12: one call per NCCL communicator.
pub type InitCtxFn = unsafe extern "C" fn(
    ctx: PtrPtr,
    comm_id: u64,
    config: *mut CommConfig,
    log: Option<Logger>,
    prof: Option<ProfilerCallback>,
) -> NcclResult;
pub type ConnectCtxFn = unsafe extern "C" fn(ctx: Ptr, dev: c_int, handle: Ptr, send_comm: PtrPtr, dev: DevHandlePtr) -> NcclResult;
pub type FinalizeFn = unsafe extern "C" fn(ctx: Ptr) -> NcclResult;
pub type SetNetAttrFn = unsafe extern "C" fn(ctx: Ptr, attr: Ptr) -> NcclResult;

/// `ncclNet_v11_t` (22 pointers, 176 bytes).
#[repr(C)]
pub struct NetV11 {
    pub name: StaticStr,
    pub init: Option<InitCtxFn>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV11) -> NcclResult>,
    pub listen: Option<ListenCtxFn>,
    pub connect: Option<ConnectCtxFn>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendPhFn>,
    pub irecv: Option<IrecvPhFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
    pub make_vdevice: Option<MakeVDeviceFn<4>>,
    pub finalize: Option<FinalizeFn>,
    pub set_net_attr: Option<SetNetAttrFn>,
}

/// `ncclNet_v12_t` (22 pointers, 176 bytes).
#[repr(C)]
pub struct NetV12 {
    pub name: StaticStr,
    pub init: Option<InitCtxFn>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<unsafe extern "C" fn(dev: c_int, props: *mut PropsV12) -> NcclResult>,
    pub listen: Option<ListenCtxFn>,
    pub connect: Option<ConnectCtxFn>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendPhFn>,
    pub irecv: Option<IrecvPhFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
    pub make_vdevice: Option<MakeVDeviceFn<8>>,
    pub finalize: Option<FinalizeFn>,
    pub set_net_attr: Option<SetNetAttrFn>,
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! Sizes and offsets from reference/nccl-net.md §1.2 (measured with gcc
    //! on x86_64 from NCCL's own headers).
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn plugin_tables_have_the_documented_sizes() {
        assert_eq!(size_of::<NetV6>(), 136);
        assert_eq!(size_of::<NetV7>(), 152);
        assert_eq!(offset_of!(NetV6, reg_mr), 7 * 8);
        assert_eq!(offset_of!(NetV6, close_listen), 16 * 8);
        assert_eq!(offset_of!(NetV7, irecv_consumed), 18 * 8);
        assert_eq!(size_of::<NetV8>(), 152);
        assert_eq!(size_of::<NetV9>(), 160);
        assert_eq!(size_of::<NetV10>(), 160);
        assert_eq!(size_of::<NetV11>(), 176);
        assert_eq!(size_of::<NetV12>(), 176);
        // Field order: spot-check the slots whose meaning changed between versions.
        assert_eq!(offset_of!(NetV8, isend), 10 * 8);
        assert_eq!(offset_of!(NetV8, test), 13 * 8);
        assert_eq!(offset_of!(NetV8, irecv_consumed), 18 * 8);
        assert_eq!(offset_of!(NetV9, make_vdevice), 19 * 8);
        assert_eq!(offset_of!(NetV10, make_vdevice), 19 * 8);
        assert_eq!(offset_of!(NetV12, reg_mr_dma_buf), 8 * 8);
        assert_eq!(offset_of!(NetV12, iflush), 12 * 8);
        assert_eq!(offset_of!(NetV12, finalize), 20 * 8);
        assert_eq!(offset_of!(NetV12, set_net_attr), 21 * 8);
        assert_eq!(offset_of!(NetV11, finalize), 20 * 8);
    }

    #[test]
    fn properties_have_the_documented_layouts() {
        assert_eq!(size_of::<PropsV6>(), 48);
        assert_eq!(offset_of!(PropsV6, speed), 28);
        assert_eq!(offset_of!(PropsV6, latency), 36);
        assert_eq!(offset_of!(PropsV6, max_recvs), 44);
        assert_eq!(size_of::<PropsV7>(), 56);
        assert_eq!(offset_of!(PropsV7, speed), 28);
        assert_eq!(offset_of!(PropsV7, net_device_type), 48);
        assert_eq!(offset_of!(PropsV7, net_device_version), 52);
        assert_eq!(size_of::<PropsV8>(), 64);
        assert_eq!(offset_of!(PropsV8, ptr_support), 24);
        assert_eq!(offset_of!(PropsV8, speed), 32);
        assert_eq!(offset_of!(PropsV8, latency), 40);
        assert_eq!(offset_of!(PropsV8, max_recvs), 48);
        assert_eq!(offset_of!(PropsV8, net_device_type), 52);
        assert_eq!(offset_of!(PropsV8, net_device_version), 56);

        assert_eq!(size_of::<PropsV9>(), 104);
        assert_eq!(offset_of!(PropsV9, force_flush), 32);
        assert_eq!(offset_of!(PropsV9, speed), 36);
        assert_eq!(offset_of!(PropsV9, v_props), 64);
        assert_eq!(offset_of!(PropsV9, max_p2p_bytes), 88);
        assert_eq!(offset_of!(PropsV9, max_coll_bytes), 96);

        assert_eq!(size_of::<PropsV11>(), 112);
        assert_eq!(offset_of!(PropsV11, max_p2p_bytes), 88);
        assert_eq!(offset_of!(PropsV11, max_multi_request_size), 104);

        assert_eq!(size_of::<PropsV12>(), 128);
        assert_eq!(offset_of!(PropsV12, name), 0);
        assert_eq!(offset_of!(PropsV12, pci_path), 8);
        assert_eq!(offset_of!(PropsV12, guid), 16);
        assert_eq!(offset_of!(PropsV12, ptr_support), 24);
        assert_eq!(offset_of!(PropsV12, reg_is_global), 28);
        assert_eq!(offset_of!(PropsV12, force_flush), 32);
        assert_eq!(offset_of!(PropsV12, speed), 36);
        assert_eq!(offset_of!(PropsV12, port), 40);
        assert_eq!(offset_of!(PropsV12, latency), 44);
        assert_eq!(offset_of!(PropsV12, max_comms), 48);
        assert_eq!(offset_of!(PropsV12, max_recvs), 52);
        assert_eq!(offset_of!(PropsV12, net_device_type), 56);
        assert_eq!(offset_of!(PropsV12, net_device_version), 60);
        assert_eq!(offset_of!(PropsV12, v_props), 64);
        assert_eq!(size_of::<VDeviceProps<8>>(), 36);
        assert_eq!(offset_of!(PropsV12, max_p2p_bytes), 104);
        assert_eq!(offset_of!(PropsV12, max_coll_bytes), 112);
        assert_eq!(offset_of!(PropsV12, max_multi_request_size), 120);
        assert_eq!(offset_of!(PropsV12, rail_id), 124);
        assert_eq!(offset_of!(PropsV12, plane_id), 126);
    }

    #[test]
    fn small_types() {
        assert_eq!(size_of::<CommConfig>(), 4);
        assert_eq!(size_of::<VDeviceProps<4>>(), 20);
        assert_eq!(size_of::<Option<Logger>>(), 8);
        assert_eq!(size_of::<StaticStr>(), 8);
    }
}
