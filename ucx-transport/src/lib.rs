//! `libuct_ff.so`: the UCX transport `ff` (UCT component and transport
//! "ff", device "router") over FreeFlow.
//!
//! UCX 1.13 only loads module names compiled into it, so this library
//! registers itself from an ELF constructor when it is preloaded:
//!
//! ```sh
//! LD_PRELOAD=/path/to/libuct_ff.so UCX_TLS=ff,self ucx_perftest ...
//! ```
//!
//! At load it checks that the UCX in the process is the 1.13 series it was
//! built for and that libuct's exported class sizes match the structs
//! re-declared in [`internal`]; otherwise it registers nothing and prints
//! one line. See docs/ucx.md for the design.

#[macro_use]
pub mod log;
pub mod config;
pub mod ep;
pub mod heap;
pub mod iface;
pub mod internal;
pub mod md;
pub mod proto;
pub mod rcache;
pub mod sys;

use internal::*;
use std::os::raw::c_char;
use std::ptr::addr_of;
use std::sync::atomic::{AtomicBool, Ordering};
use sys::*;

pub const NAME: &str = "ff";

/// Checks the UCX this process runs against: the 1.13 series (what the
/// internal layouts were taken from) and libuct's own class sizes.
pub fn check_ucx() -> Result<(), String> {
    let (mut major, mut minor, mut release) = (0, 0, 0);
    // SAFETY: plain out-parameters.
    unsafe { ucp_get_version(&mut major, &mut minor, &mut release) };
    // SAFETY: reading the size field of classes libuct exports.
    let sizes = unsafe { (addr_of!(uct_base_iface_t_class.size).read(), addr_of!(uct_iface_t_class.size).read()) };
    check_versions((major, minor, release), sizes)
}

/// The decision of [`check_ucx`], on its inputs: `(major, minor, release)`
/// of the loaded UCX and libuct's `(uct_base_iface_t, uct_iface_t)` sizes.
pub fn check_versions(found: (u32, u32, u32), sizes: (usize, usize)) -> Result<(), String> {
    let (major, minor, release) = found;
    if (major, minor) != (UCT_VERNO_MAJOR, UCT_VERNO_MINOR) {
        return Err(format!(
            "UCX {major}.{minor}.{release} is loaded but libuct_ff was built for UCX {}.{}.x",
            UCT_VERNO_MAJOR, UCT_VERNO_MINOR
        ));
    }
    let (base, plain) = sizes;
    if base != BASE_IFACE_SIZE || plain != IFACE_SIZE {
        return Err(format!(
            "libuct's uct_base_iface_t is {base} bytes and uct_iface_t {plain} (expected {BASE_IFACE_SIZE} and {IFACE_SIZE}: a statistics-enabled or patched UCX?)"
        ));
    }
    Ok(())
}

static REGISTERED: AtomicBool = AtomicBool::new(false);

fn cname<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (i, b) in s.bytes().take(N - 1).enumerate() {
        out[i] = b as c_char;
    }
    out
}

unsafe extern "C" fn cm_open_unsupported(
    _c: *mut UctComponent,
    _w: uct_worker_h,
    _cfg: *const std::os::raw::c_void,
    _cm: *mut uct_cm_h,
) -> ucs_status_t {
    UCS_ERR_UNSUPPORTED
}

unsafe extern "C" fn md_vfs_init(_md: uct_md_h) {}

fn empty_entry() -> ucs_config_global_list_entry_t {
    ucs_config_global_list_entry_t {
        name: c"".as_ptr(),
        prefix: c"".as_ptr(),
        table: std::ptr::null_mut(),
        size: 0,
        list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
    }
}

/// Registers the component and transport with libuct (once). Called by the
/// constructor; callable again (a no-op) by tests that link the crate.
pub fn register() -> Result<(), String> {
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    if let Err(why) = check_ucx() {
        REGISTERED.store(false, Ordering::Release);
        return Err(why);
    }
    // Leaked on purpose: libuct keeps pointers to both for the life of the
    // process (the library is linked with -z nodelete, never unloaded).
    let comp = Box::leak(Box::new(UctComponent {
        name: cname::<16>(NAME),
        query_md_resources: Some(uct_md_query_single_md_resource),
        md_open: Some(md::md_open),
        cm_open: Some(cm_open_unsupported),
        rkey_unpack: Some(md::rkey_unpack),
        rkey_ptr: Some(md::rkey_ptr),
        rkey_release: Some(md::rkey_release),
        md_config: ucs_config_global_list_entry_t {
            name: c"FF memory domain".as_ptr(),
            prefix: c"FF_".as_ptr(),
            table: std::ptr::addr_of_mut!(config::MD_CONFIG_TABLE) as *mut ucs_config_field_t,
            size: std::mem::size_of::<config::MdConfig>(),
            list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
        },
        cm_config: empty_entry(),
        tl_list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
        list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
        flags: 0,
        md_vfs_init: Some(md_vfs_init),
    }));
    let head = std::ptr::addr_of_mut!(comp.tl_list);
    comp.tl_list = ucs_list_link_t { prev: head, next: head };
    let tl = Box::leak(Box::new(UctTl {
        name: cname::<10>(NAME),
        query_devices: Some(iface::query_devices),
        iface_open: Some(iface::iface_open),
        config: ucs_config_global_list_entry_t {
            name: c"FF transport".as_ptr(),
            prefix: c"FF_".as_ptr(),
            table: std::ptr::addr_of_mut!(config::IFACE_CONFIG_TABLE) as *mut ucs_config_field_t,
            size: std::mem::size_of::<config::IfaceConfig>(),
            list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
        },
        list: ucs_list_link_t { prev: std::ptr::null_mut(), next: std::ptr::null_mut() },
    }));
    // SAFETY: both objects live forever; libuct links them into its lists.
    unsafe {
        uct_component_register(comp);
        uct_tl_register(comp, tl);
    }
    Ok(())
}

extern "C" fn on_load() {
    if std::env::var_os("UCX_FF_DISABLE").is_some_and(|v| v == "1" || v == "y" || v == "yes") {
        return;
    }
    if let Err(why) = register() {
        // One clear line, nothing registered, nothing else touched.
        eprintln!("libuct_ff: {why}; transport ff not registered");
    }
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_ucx_versions_and_layouts() {
        assert!(check_versions((1, 13, 1), (BASE_IFACE_SIZE, IFACE_SIZE)).is_ok());
        assert!(check_versions((1, 13, 0), (BASE_IFACE_SIZE, IFACE_SIZE)).is_ok(), "any 1.13.x");
        let e = check_versions((1, 16, 0), (BASE_IFACE_SIZE, IFACE_SIZE)).unwrap_err();
        assert!(e.contains("UCX 1.16.0") && e.contains("built for UCX 1.13"), "{e}");
        let e = check_versions((1, 13, 1), (1296, IFACE_SIZE)).unwrap_err();
        assert!(e.contains("1296"), "{e}");
    }
}
