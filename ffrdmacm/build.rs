//! Generates, for the library that stands in for Debian 12's
//! `librdmacm.so.1` (rdma-core 44):
//! - Rust layouts of the system's `rdma/rdma_cma.h` (bindgen, with layout
//!   tests), and the libibverbs functions we call (at run time ffverbs'
//!   `libibverbs.so.1`, found by the same `LD_LIBRARY_PATH`);
//! - the exported symbols with their versions and the soname
//!   `librdmacm.so.1` (the `symver` crate): `symbols.txt` lists what
//!   Debian's library exports; each `NAME@@VERSION` is an alias of
//!   `ffcm_NAME`, which `src/abi.rs` defines (kind `impl`) or which is a
//!   generated stub that fails with ENOSYS (the rsocket family, multicast,
//!   ECE).
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=symbols.txt");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_type("rdma_.*|ibv_.*|verbs_context")
        .allowlist_var("RDMA_.*|RAI_.*|IBV_.*")
        .allowlist_function(
            "ibv_(get_device_list|free_device_list|open_device|close_device|query_gid|query_port|alloc_pd|dealloc_pd|create_qp|modify_qp|query_qp|destroy_qp|create_cq|destroy_cq|create_comp_channel|destroy_comp_channel|create_srq|destroy_srq)",
        )
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate()
        .expect("bindgen on rdma/rdma_cma.h (install librdmacm-dev and libclang-dev: scripts/deps.sh)");
    bindings.write_to_file(out.join("rdmacm_sys.rs")).unwrap();
    println!("cargo:rustc-link-lib=ibverbs");

    let syms = std::fs::read_to_string("symbols.txt").unwrap();
    symver::generate(
        &symver::Exports { symbols: &syms, prefix: "ffcm_", soname: "librdmacm.so.1", unsupported: "crate::abi::unsupported", int_fail: "-1" },
        &out,
    );
}
