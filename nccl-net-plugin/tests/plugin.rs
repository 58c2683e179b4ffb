//! The plugin as NCCL sees it: the built `libnccl_net_ff.so`, loaded with
//! `dlopen(RTLD_NOW | RTLD_LOCAL)` and `dlsym("ncclNetPlugin_vN")` by
//! `nccl-harness`, driven the way NCCL's proxy drives a net plugin (service
//! thread for connect/accept, progress thread for isend/irecv/test), between
//! two processes in two namespace-isolated containers through a real router.
//! Needs root (containers) and the workspace built (`ffrouter`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fftestkit::{Container, RouterProc};

const LONG: Duration = Duration::from_secs(240);

fn harness() -> &'static str {
    env!("CARGO_BIN_EXE_nccl-harness")
}

/// The cdylib cargo built for this crate (target/<profile>/libnccl_net_ff.so).
fn lib() -> String {
    let p: PathBuf = fftestkit::bin_dir().join("libnccl_net_ff.so");
    assert!(p.exists(), "{} not built", p.display());
    p.to_str().unwrap().to_string()
}

fn ok(r: &(bool, String, String), what: &str) {
    assert!(r.0, "{what} failed\nstdout: {}\nstderr: {}", r.1, r.2);
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    let line = out.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("no RESULT in {out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn exports_seven_versions_and_links_only_libc_and_libgcc() {
    let lib = lib();
    let mut defined: Vec<String> =
        run("nm", &["-D", "--defined-only", &lib]).lines().filter_map(|l| l.split_whitespace().nth(2).map(String::from)).collect();
    defined.sort();
    assert_eq!(
        defined,
        ["ncclNetPlugin_v10", "ncclNetPlugin_v11", "ncclNetPlugin_v12", "ncclNetPlugin_v6", "ncclNetPlugin_v7", "ncclNetPlugin_v8", "ncclNetPlugin_v9"]
    );
    for line in run("nm", &["-D", "--undefined-only", &lib]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            // Weak references every shared object carries (gmon, TM clones).
            ["w", _] => {}
            ["U", sym] => assert!(sym.contains("@GLIBC_") || sym.contains("@GCC_"), "{sym} is not from libc or libgcc"),
            _ => panic!("unexpected nm line {line:?}"),
        }
    }
    let dynamic = run("readelf", &["-d", &lib]);
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        assert!(
            ["libc.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"].iter().any(|n| line.contains(n)),
            "unexpected dependency: {line}"
        );
    }
    assert!(dynamic.contains("NODELETE"), "linked -z nodelete, so NCCL's dlclose is harmless");
    assert!(dynamic.contains("BIND_NOW") || dynamic.contains("NOW"), "{dynamic}");
}

#[test]
fn selftest_every_version_bad_input_no_router_and_reload_in_a_container() {
    let r = RouterProc::start(&["a"], &[]);
    let lib = lib();
    let c = Container::run(&r.tenant_dir("a"), &[harness(), "selftest", "--lib", &lib]);
    let res = c.finish(LONG);
    ok(&res, "selftest");
    for v in [6, 7, 8, 9, 10, 11, 12] {
        for check in ["table_and_properties", "send_before_recv_sizes_and_zero_bytes", "32_in_flight_fifo_then_null", "bad_input_is_an_error_code"] {
            assert!(res.1.contains(&format!("CHECK v{v}_{check} ok")), "v{v} {check}: {}", res.1);
        }
    }
    assert!(res.1.contains("CHECK no_router ok") && res.1.contains("CHECK dlopen_dlclose_dlopen ok"), "{}", res.1);
    assert!(res.1.contains("RESULT selftest ok=1"));
}

/// Receiver and sender in two containers; returns both outcomes.
fn traffic(recv_args: &[&str], send_args: &[&str]) -> ((bool, String, String), (bool, String, String)) {
    let r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let lib = lib();
    let mut argv = vec![harness(), "recv", "--lib", &lib];
    argv.extend_from_slice(recv_args);
    let mut recv = Container::run(&d, &argv);
    let handle = recv.read_line_with("HANDLE ");
    let mut argv = vec![harness(), "send", "--lib", &lib, "--handle", &handle];
    argv.extend_from_slice(send_args);
    let send = Container::run(&d, &argv);
    let s = send.finish(LONG);
    let rv = recv.finish(LONG);
    // Everything both sides held is freed.
    let st = r.context("a").stats().unwrap();
    assert_eq!((st.listeners, st.conns), (0, 0), "{st:?}");
    (rv, s)
}

#[test]
fn checksummed_0b_to_16mib_8_in_flight_6_comms_closed_in_different_orders() {
    // The receiver closes each comm as soon as its traffic is done, with one
    // receive still posted; the sender closes all of them at the end in
    // reverse order.
    let common = ["--comms", "6", "--window", "8"];
    let mut ra = vec!["--abi", "12", "--inflight-close"];
    ra.extend_from_slice(&common);
    let mut sa = vec!["--abi", "12"];
    sa.extend_from_slice(&common);
    let (rv, s) = traffic(&ra, &sa);
    ok(&rv, "receiver");
    ok(&s, "sender");
    for out in [&rv.1, &s.1] {
        assert_eq!(field(out, "comms"), "6", "{out}");
        assert_eq!(field(out, "messages"), "60", "{out}");
        assert_eq!(field(out, "mismatches"), "0", "{out}");
        assert_eq!(field(out, "ok"), "1", "{out}");
    }
    assert_eq!(field(&rv.1, "crc"), field(&s.1, "crc"), "both sides saw the same bytes");
    assert_eq!(field(&rv.1, "bytes"), field(&s.1, "bytes"));
}

#[test]
fn older_abi_versions_interoperate_across_processes() {
    // NCCL 2.13-2.27 tables (v6 without device handles, v7 and v8 with int
    // sizes, v9, v10) against newer ones on the other side: handles and data
    // do not depend on the version.
    for (rv_abi, s_abi) in [("11", "8"), ("9", "10"), ("6", "12"), ("7", "6")] {
        let sizes = "0,1,4095,65537,1048576,4194307";
        let (rv, s) = traffic(&["--abi", rv_abi, "--comms", "2", "--sizes", sizes], &["--abi", s_abi, "--comms", "2", "--sizes", sizes]);
        ok(&rv, "receiver");
        ok(&s, "sender");
        assert_eq!(field(&rv.1, "ok"), "1");
        assert_eq!(field(&rv.1, "crc"), field(&s.1, "crc"));
    }
}

/// Floods one comm with 1 MiB messages, SIGKILLs one side once data flows,
/// and expects the survivor to fail with ncclRemoteError, not hang.
fn kill_mid_transfer(kill_sender: bool) {
    let r = RouterProc::start(&["a"], &[]);
    let d = r.tenant_dir("a");
    let lib = lib();
    let flood = ["--mode", "flood", "--size", "1048576"];
    let mut argv = vec![harness(), "recv", "--lib", &lib];
    argv.extend_from_slice(&flood);
    let mut recv = Container::run(&d, &argv);
    let handle = recv.read_line_with("HANDLE ");
    let mut argv = vec![harness(), "send", "--lib", &lib, "--handle", &handle];
    argv.extend_from_slice(&flood);
    let mut send = Container::run(&d, &argv);
    send.read_line_with("FLOODING");
    recv.read_line_with("FLOODING");
    let (mut victim, survivor) = if kill_sender { (send, recv) } else { (recv, send) };
    victim.wait_started();
    victim.kill();
    assert!(!victim.finish(Duration::from_secs(20)).0, "a killed process cannot succeed");
    let res = survivor.finish(Duration::from_secs(60)); // panics on a hang
    assert!(!res.0, "the survivor must report the dead peer");
    assert!(res.2.contains("returned 6 (ncclRemoteError)"), "stderr: {}", res.2);
    assert!(res.2.contains("NET/FreeFlow : ") && res.2.contains("peer"), "logged through NCCL's logger: {}", res.2);
}

#[test]
fn killed_sender_gives_the_receiver_an_error() {
    kill_mid_transfer(true);
}

#[test]
fn killed_receiver_gives_the_sender_an_error() {
    kill_mid_transfer(false);
}
