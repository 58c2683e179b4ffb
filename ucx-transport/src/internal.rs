//! UCX 1.13 internal structs an out-of-tree transport must share with
//! libuct, re-declared by hand because UCX does not install their headers
//! (src/uct/base/uct_component.h, uct_iface.h, uct_md.h, api/v2/uct_v2.h at
//! tag v1.13.1; x86_64, built without statistics as Debian's is).
//!
//! These layouts change between UCX minor releases, so [`crate::check_ucx`]
//! refuses to register on anything but the 1.13 series, and cross-checks
//! the class sizes libuct exports. The tests below pin every size and
//! offset we rely on.

use crate::sys::*;
use std::os::raw::{c_char, c_int, c_uint, c_void};

/// `struct uct_component` (uct_component.h), 208 bytes.
#[repr(C)]
pub struct UctComponent {
    pub name: [c_char; 16],
    pub query_md_resources: Option<unsafe extern "C" fn(*mut UctComponent, *mut *mut uct_md_resource_desc_t, *mut c_uint) -> ucs_status_t>,
    pub md_open: Option<unsafe extern "C" fn(*mut UctComponent, *const c_char, *const uct_md_config_t, *mut uct_md_h) -> ucs_status_t>,
    pub cm_open: Option<unsafe extern "C" fn(*mut UctComponent, uct_worker_h, *const c_void, *mut uct_cm_h) -> ucs_status_t>,
    pub rkey_unpack: Option<unsafe extern "C" fn(*mut UctComponent, *const c_void, *mut uct_rkey_t, *mut *mut c_void) -> ucs_status_t>,
    pub rkey_ptr: Option<unsafe extern "C" fn(*mut UctComponent, uct_rkey_t, *mut c_void, u64, *mut *mut c_void) -> ucs_status_t>,
    pub rkey_release: Option<unsafe extern "C" fn(*mut UctComponent, uct_rkey_t, *mut c_void) -> ucs_status_t>,
    pub md_config: ucs_config_global_list_entry_t,
    pub cm_config: ucs_config_global_list_entry_t,
    pub tl_list: ucs_list_link_t,
    pub list: ucs_list_link_t,
    pub flags: u64,
    pub md_vfs_init: Option<unsafe extern "C" fn(uct_md_h)>,
}

/// `uct_tl_device_resource_t` (uct_iface.h), 40 bytes. Arrays of these are
/// freed by libuct with free(3).
#[repr(C)]
pub struct UctTlDeviceResource {
    pub name: [c_char; 32],
    pub type_: uct_device_type_t,
    pub sys_device: ucs_sys_device_t,
}

/// `uct_tl_t` (uct_iface.h), 96 bytes.
#[repr(C)]
pub struct UctTl {
    pub name: [c_char; 10],
    pub query_devices: Option<unsafe extern "C" fn(uct_md_h, *mut *mut UctTlDeviceResource, *mut c_uint) -> ucs_status_t>,
    pub iface_open: Option<
        unsafe extern "C" fn(uct_md_h, uct_worker_h, *const uct_iface_params_t, *const uct_iface_config_t, *mut uct_iface_h) -> ucs_status_t,
    >,
    pub config: ucs_config_global_list_entry_t,
    pub list: ucs_list_link_t,
}

/// `struct uct_md` (uct_md.h): what every memory domain starts with.
#[repr(C)]
pub struct UctMd {
    pub ops: *const UctMdOps,
    pub component: *mut UctComponent,
}

/// `uct_md_mem_dereg_params_t` (api/v2/uct_v2.h), 32 bytes.
#[repr(C)]
pub struct MemDeregParams {
    pub field_mask: u64,
    pub flags: c_uint,
    pub memh: uct_mem_h,
    pub comp: *mut uct_completion_t,
}
pub const UCT_MD_MEM_DEREG_FIELD_MEMH: u64 = 1 << 0;
pub const UCT_MD_MEM_DEREG_FIELD_FLAGS: u64 = 1 << 1;
pub const UCT_MD_MEM_DEREG_FIELD_COMPLETION: u64 = 1 << 2;
pub const UCT_MD_MEM_DEREG_FLAG_INVALIDATE: c_uint = 1 << 0;

/// `uct_md_mkey_pack_params_t` (api/v2/uct_v2.h), 16 bytes.
#[repr(C)]
pub struct MkeyPackParams {
    pub field_mask: u64,
    pub flags: c_uint,
}

/// A slot we fill with `ucs_empty_function_return_unsupported`.
pub type Unsupported = Option<unsafe extern "C" fn() -> ucs_status_t>;

/// `struct uct_md_ops` (uct_md.h), 11 pointers.
#[repr(C)]
pub struct UctMdOps {
    pub close: Option<unsafe extern "C" fn(uct_md_h)>,
    pub query: Option<unsafe extern "C" fn(uct_md_h, *mut uct_md_attr_t) -> ucs_status_t>,
    pub mem_alloc: Option<unsafe extern "C" fn(uct_md_h, *mut usize, *mut *mut c_void, ucs_memory_type_t, c_uint, *const c_char, *mut uct_mem_h) -> ucs_status_t>,
    pub mem_free: Option<unsafe extern "C" fn(uct_md_h, uct_mem_h) -> ucs_status_t>,
    pub mem_advise: Unsupported,
    pub mem_reg: Option<unsafe extern "C" fn(uct_md_h, *mut c_void, usize, c_uint, *mut uct_mem_h) -> ucs_status_t>,
    pub mem_dereg: Option<unsafe extern "C" fn(uct_md_h, *const MemDeregParams) -> ucs_status_t>,
    pub mem_query: Unsupported,
    pub mkey_pack: Option<unsafe extern "C" fn(uct_md_h, uct_mem_h, *const MkeyPackParams, *mut c_void) -> ucs_status_t>,
    pub is_sockaddr_accessible: Option<unsafe extern "C" fn(uct_md_h, *const c_void, c_int) -> c_int>,
    pub detect_memory_type: Unsupported,
}
// SAFETY: a table of function pointers and nulls, never written.
unsafe impl Sync for UctMdOps {}

/// `struct uct_iface_config` (uct_iface.h), 32 bytes: the head of every
/// transport's configuration struct.
#[repr(C)]
pub struct UctIfaceConfig {
    pub alloc_methods: *mut uct_alloc_method_t,
    pub alloc_count: c_uint,
    /// Padding of the nested `alloc_methods` struct.
    pub _pad: c_uint,
    pub failure: c_int,
    pub max_num_eps: usize,
}

/// `uct_am_handler_t` (uct_iface.h), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AmHandler {
    pub cb: uct_am_callback_t,
    pub arg: *mut c_void,
    pub flags: u32,
}

/// `uct_iface_internal_ops_t` (uct_iface.h), 32 bytes; we use libuct's
/// exported `uct_base_iface_internal_ops`.
#[repr(C)]
pub struct InternalOps {
    pub iface_estimate_perf: *const c_void,
    pub iface_vfs_refresh: *const c_void,
    pub ep_query: *const c_void,
    pub ep_invalidate: *const c_void,
}

/// `uct_base_iface_t` (uct_iface.h), 1280 bytes: every iface starts with it.
#[repr(C)]
pub struct BaseIface {
    pub super_: uct_iface_t,
    pub internal_ops: *mut InternalOps,
    pub md: uct_md_h,
    pub worker: *mut c_void,
    pub am: [AmHandler; UCT_AM_ID_MAX as usize],
    pub am_tracer: uct_am_tracer_t,
    pub am_tracer_arg: *mut c_void,
    pub err_handler: uct_error_handler_t,
    pub err_handler_arg: *mut c_void,
    pub err_handler_flags: u32,
    pub prog_id: c_int,
    pub prog_refcount: u32,
    pub progress_flags: c_uint,
    pub num_alloc_methods: c_uint,
    pub alloc_methods: [uct_alloc_method_t; 5],
    pub failure_level: ucs_log_level_t,
    pub max_num_eps: usize,
}

pub const BASE_IFACE_SIZE: usize = 1280;
pub const IFACE_SIZE: usize = 400;

extern "C" {
    pub static mut uct_base_iface_t_class: ucs_class_t;
    pub static mut uct_iface_t_class: ucs_class_t;
    pub static mut uct_base_iface_internal_ops: InternalOps;
    pub static mut uct_iface_config_table: [ucs_config_field_t; 0];
    pub static mut uct_md_config_table: [ucs_config_field_t; 0];
    pub fn uct_component_register(component: *mut UctComponent);
    pub fn uct_component_unregister(component: *mut UctComponent);
    pub fn uct_tl_register(component: *mut UctComponent, tl: *mut UctTl);
    pub fn uct_tl_unregister(tl: *mut UctTl);
    /// UCS_CLASS_INIT's function for uct_base_iface_t (class.h pattern).
    pub fn uct_base_iface_t_init(
        self_: *mut BaseIface,
        cls: *mut ucs_class_t,
        init_count: *mut c_int,
        ops: *mut uct_iface_ops_t,
        internal_ops: *mut InternalOps,
        md: uct_md_h,
        worker: uct_worker_h,
        params: *const uct_iface_params_t,
        config: *const UctIfaceConfig,
    ) -> ucs_status_t;
    pub fn uct_base_iface_query(iface: *mut c_void, attr: *mut uct_iface_attr_t);
    pub fn uct_base_iface_progress_enable(iface: uct_iface_h, flags: c_uint);
    pub fn uct_base_iface_progress_disable(iface: uct_iface_h, flags: c_uint);
    /// Calls the iface's error handler (`uct_iface_params.err_handler`) for `ep`.
    pub fn uct_iface_handle_ep_err(iface: uct_iface_h, ep: uct_ep_h, status: ucs_status_t) -> ucs_status_t;
    pub fn uct_base_ep_am_short_iov(ep: uct_ep_h, id: u8, iov: *const uct_iov_t, iovcnt: usize) -> ucs_status_t;
    pub fn uct_md_query_single_md_resource(
        component: *mut UctComponent,
        resources_p: *mut *mut uct_md_resource_desc_t,
        num_resources_p: *mut c_uint,
    ) -> ucs_status_t;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn component_layout() {
        assert_eq!(size_of::<UctComponent>(), 208);
        assert_eq!(offset_of!(UctComponent, query_md_resources), 16);
        assert_eq!(offset_of!(UctComponent, md_open), 24);
        assert_eq!(offset_of!(UctComponent, cm_open), 32);
        assert_eq!(offset_of!(UctComponent, rkey_unpack), 40);
        assert_eq!(offset_of!(UctComponent, rkey_ptr), 48);
        assert_eq!(offset_of!(UctComponent, rkey_release), 56);
        assert_eq!(offset_of!(UctComponent, md_config), 64);
        assert_eq!(offset_of!(UctComponent, cm_config), 112);
        assert_eq!(offset_of!(UctComponent, tl_list), 160);
        assert_eq!(offset_of!(UctComponent, list), 176);
        assert_eq!(offset_of!(UctComponent, flags), 192);
        assert_eq!(offset_of!(UctComponent, md_vfs_init), 200);
    }

    #[test]
    fn tl_layouts() {
        assert_eq!(size_of::<UctTl>(), 96);
        assert_eq!(offset_of!(UctTl, query_devices), 16);
        assert_eq!(offset_of!(UctTl, iface_open), 24);
        assert_eq!(offset_of!(UctTl, config), 32);
        assert_eq!(offset_of!(UctTl, list), 80);
        assert_eq!(size_of::<UctTlDeviceResource>(), 40);
        assert_eq!(offset_of!(UctTlDeviceResource, type_), 32);
        assert_eq!(offset_of!(UctTlDeviceResource, sys_device), 36);
        assert_eq!(size_of::<ucs_config_global_list_entry_t>(), 48);
        assert_eq!(size_of::<ucs_config_field_t>(), 80);
        assert_eq!(size_of::<ucs_class_t>(), 40);
    }

    #[test]
    fn md_layouts() {
        assert_eq!(size_of::<UctMd>(), 16);
        assert_eq!(size_of::<UctMdOps>(), 88);
        assert_eq!(offset_of!(UctMdOps, mem_reg), 40);
        assert_eq!(offset_of!(UctMdOps, mem_dereg), 48);
        assert_eq!(offset_of!(UctMdOps, mkey_pack), 64);
        assert_eq!(offset_of!(UctMdOps, detect_memory_type), 80);
        assert_eq!(size_of::<MemDeregParams>(), 32);
        assert_eq!(offset_of!(MemDeregParams, flags), 8);
        assert_eq!(offset_of!(MemDeregParams, memh), 16);
        assert_eq!(offset_of!(MemDeregParams, comp), 24);
        assert_eq!(size_of::<MkeyPackParams>(), 16);
    }

    #[test]
    fn iface_layouts() {
        assert_eq!(size_of::<uct_iface_t>(), IFACE_SIZE);
        assert_eq!(size_of::<uct_iface_ops_t>(), 400);
        assert_eq!(size_of::<uct_ep_t>(), 8);
        assert_eq!(size_of::<UctIfaceConfig>(), 32);
        assert_eq!(offset_of!(UctIfaceConfig, failure), 16);
        assert_eq!(offset_of!(UctIfaceConfig, max_num_eps), 24);
        assert_eq!(offset_of!(crate::config::IfaceConfig, seg_size), 32, "our fields follow the base config");
        assert_eq!(size_of::<AmHandler>(), 24);
        assert_eq!(size_of::<InternalOps>(), 32);
        assert_eq!(size_of::<BaseIface>(), BASE_IFACE_SIZE);
        assert_eq!(offset_of!(BaseIface, internal_ops), 400);
        assert_eq!(offset_of!(BaseIface, md), 408);
        assert_eq!(offset_of!(BaseIface, worker), 416);
        assert_eq!(offset_of!(BaseIface, am), 424);
        assert_eq!(offset_of!(BaseIface, am_tracer), 1192);
        assert_eq!(offset_of!(BaseIface, am_tracer_arg), 1200);
        assert_eq!(offset_of!(BaseIface, err_handler), 1208);
        assert_eq!(offset_of!(BaseIface, err_handler_arg), 1216);
        assert_eq!(offset_of!(BaseIface, err_handler_flags), 1224);
        assert_eq!(offset_of!(BaseIface, prog_id), 1228);
        assert_eq!(offset_of!(BaseIface, progress_flags), 1236);
        assert_eq!(offset_of!(BaseIface, num_alloc_methods), 1240);
        assert_eq!(offset_of!(BaseIface, failure_level), 1264);
        assert_eq!(offset_of!(BaseIface, max_num_eps), 1272);
    }

    #[test]
    fn installed_libuct_agrees() {
        // The sizes libuct was built with, from its exported class objects.
        unsafe {
            assert_eq!(std::ptr::addr_of!(uct_base_iface_t_class.size).read(), BASE_IFACE_SIZE);
            assert_eq!(std::ptr::addr_of!(uct_iface_t_class.size).read(), IFACE_SIZE);
        }
        crate::check_ucx().expect("this UCX is the one the transport was built for");
    }
}
