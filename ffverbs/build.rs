//! Generates, for the library that stands in for Debian 12's
//! `libibverbs.so.1` (rdma-core 44):
//! - Rust layouts of the system's `infiniband/verbs.h` (bindgen, with
//!   layout tests);
//! - the exported symbols with their versions and the soname
//!   `libibverbs.so.1` (the `symver` crate): `symbols.txt` lists what
//!   Debian's library exports; each `NAME@@VERSION` is an alias of
//!   `ffv_NAME`, which `src/abi.rs` defines (kind `impl`) or which is a
//!   generated stub that fails with EOPNOTSUPP; the hidden `IBVERBS_1.0`
//!   ABI (`compat`) gets stubs too.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=symbols.txt");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_type("ibv_.*|verbs_.*|_compat_ibv_port_attr")
        .allowlist_var("IBV_.*")
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate()
        .expect("bindgen on infiniband/verbs.h (install libibverbs-dev and libclang-dev: scripts/deps.sh)");
    bindings.write_to_file(out.join("verbs_sys.rs")).unwrap();

    let syms = std::fs::read_to_string("symbols.txt").unwrap();
    symver::generate(
        &symver::Exports { symbols: &syms, prefix: "ffv_", soname: "libibverbs.so.1", unsupported: "crate::abi::unsupported", int_fail: "libc::EOPNOTSUPP" },
        &out,
    );
}
