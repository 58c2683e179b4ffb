//! Generates Rust bindings for the installed UCX headers (public API only)
//! and links libuct, libucs and libucp.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=dylib=uct");
    println!("cargo:rustc-link-lib=dylib=ucs");
    println!("cargo:rustc-link-lib=dylib=ucp");
    // libuct keeps pointers into this library for the life of the process.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_macro_fallback()
        .allowlist_type("uct_.*|ucs_.*|ucp_.*|ucm_event_type")
        .allowlist_function("uct_.*|ucs_config_.*|ucs_async_context_create|ucs_async_context_destroy|ucs_log_dispatch|ucs_get_system_id|ucp_get_version|ucs_empty_function.*|ucs_class_call_cleanup_chain")
        .allowlist_function("ucs_rcache_create|ucs_rcache_destroy|ucs_rcache_get|ucs_rcache_region_put")
        .allowlist_var("UCT_.*|UCS_.*|UCM_EVENT_VM_UNMAPPED|uct_.*|ucs_global_opts|ucs_config_global_list")
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate()
        .expect("bindgen on the UCX headers (install libucx-dev and libclang-dev: scripts/deps.sh)");
    bindings.write_to_file(out.join("ucx_sys.rs")).unwrap();
}
