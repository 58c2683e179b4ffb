//! The heap (`UCX_FF_HEAP`, 1 MiB by default; ucx-transport/src/heap.rs):
//! a process that preloads libuct_ff.so and opened the ff memory domain
//! gets its large allocations as shadow regions of their own. tests/ucp/ffheap.c checks,
//! in a real process (compiled here against the installed libucp): small
//! allocations stay glibc's, large ones are `ff-region` mappings, page
//! aligned, with `malloc_usable_size`; freed ones are reused and `calloc`
//! zeroes them; `realloc` keeps the contents growing into a new region,
//! shrinking in place or back to glibc; the aligned allocators (up to
//! 2 MiB from regions, beyond from glibc); `fork()`:
//! the child reads the parent's data and its writes never reach the parent,
//! and it gets no new regions; 20 live regions at once; glibc again after
//! `ucp_cleanup`; and `UCX_FF_HEAP=inf` turns it all off. Data through
//! heap memory: the Open MPI jobs (tests/multihost.rs, tests/containers.rs)
//! move 1 B to 64 MiB, checksummed, between `malloc`'d buffers.
//!
//! Needs UCX 1.13 (libucx-dev, gcc) and a built workspace.

#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use fftestkit::RouterProc;

fn ffheap() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_ucp_program("ffheap")).clone()
}

/// Runs ffheap with `args` and extra environment; its stdout.
fn run(router: &RouterProc, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(ffheap())
        .args(args)
        .env("LD_PRELOAD", common::lib())
        .env("UCX_TLS", "ff")
        .env("FF_ROUTER_SOCKET", router.socket("a"))
        .env("UCX_WARN_UNUSED_ENV_VARS", "n")
        .env("UCX_FF_HEAP", "1m") // the default, whatever the environment says
        .envs(env.iter().copied())
        .output()
        .expect("ffheap");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stdout.contains("FAIL") && stdout.ends_with("DONE\n"), "ffheap {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

#[test]
fn large_allocations_are_shadow_regions_that_behave_as_malloc_memory() {
    let router = RouterProc::start(&["a"], &[]);
    let out = run(&router, &[], &[]);
    for check in [
        "small", "large", "aligned", "usable", "reused", "calloc-zero", "realloc-grow", "realloc-shrink", "realloc-small", "memalign", "memalign-2m", "memalign-2m-usable", "memalign-2m-realloc", "memalign-big", "memalign-bad",
        "aligned_alloc", "fork-child", "fork-parent", "many", "after-cleanup",
    ] {
        assert!(out.lines().any(|l| l == format!("OK {check}")), "check {check} did not run:\n{out}");
    }
}

#[test]
fn the_heap_can_be_turned_off() {
    let router = RouterProc::start(&["a"], &[]);
    let out = run(&router, &["off"], &[("UCX_FF_HEAP", "inf")]);
    assert!(out.contains("OK large"), "{out}");
}

#[test]
fn without_a_router_glibc_serves_everything() {
    let router = RouterProc::start(&["a"], &[]);
    // A socket nobody listens on: the domain has no router, so no heap.
    let out = Command::new(ffheap())
        .arg("off")
        .env("LD_PRELOAD", common::lib())
        .env("UCX_TLS", "ff,self")
        .env("UCX_FF_HEAP", "1m")
        .env("FF_ROUTER_SOCKET", router.socket("a").with_file_name("nobody.sock"))
        .env("UCX_WARN_UNUSED_ENV_VARS", "n")
        .output()
        .expect("ffheap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("OK large") && stdout.ends_with("DONE\n"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
