//! The NCCL plugin between two hosts: each host a network namespace with its
//! own router (joined by a veth, routers linked over TCP), the harness's
//! receiver in a container on one host and its sender on the other. Same
//! handles, same plugin: the routers carry the traffic. Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fftestkit::hosts::TwoHosts;

const LONG: Duration = Duration::from_secs(240);

fn harness() -> &'static str {
    env!("CARGO_BIN_EXE_nccl-harness")
}

fn lib() -> String {
    let p: PathBuf = fftestkit::bin_dir().join("libnccl_net_ff.so");
    assert!(p.exists(), "{} not built", p.display());
    p.to_str().unwrap().to_string()
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    let line = out.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("no RESULT in {out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn two_hosts() -> TwoHosts {
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    h
}

#[test]
fn checksummed_0b_to_16mib_across_hosts_6_comms_8_in_flight() {
    let h = two_hosts();
    let lib = lib();
    let common = ["--abi", "12", "--comms", "6", "--window", "8"];
    let mut argv = vec![harness(), "recv", "--lib", &lib];
    argv.extend_from_slice(&common);
    let mut recv = h.container(0, "a", &argv);
    let handle = recv.read_line_with("HANDLE ");
    let mut argv = vec![harness(), "send", "--lib", &lib, "--handle", &handle];
    argv.extend_from_slice(&common);
    let send = h.container(1, "a", &argv);
    let s = send.finish(LONG);
    let rv = recv.finish(LONG);
    assert!(rv.0, "receiver (host 0) failed\n{}\n{}", rv.1, rv.2);
    assert!(s.0, "sender (host 1) failed\n{}\n{}", s.1, s.2);
    for out in [&rv.1, &s.1] {
        assert_eq!(field(out, "comms"), "6", "{out}");
        assert_eq!(field(out, "mismatches"), "0", "{out}");
        assert_eq!(field(out, "ok"), "1", "{out}");
    }
    assert_eq!(field(&rv.1, "crc"), field(&s.1, "crc"), "both sides saw the same bytes");
    assert_eq!(field(&rv.1, "bytes"), field(&s.1, "bytes"));
}

#[test]
fn killing_the_receivers_router_fails_the_sender_on_the_other_host() {
    let mut h = two_hosts();
    let lib = lib();
    let flood = ["--mode", "flood", "--size", "1048576"];
    let mut argv = vec![harness(), "recv", "--lib", &lib];
    argv.extend_from_slice(&flood);
    let mut recv = h.container(0, "a", &argv);
    let handle = recv.read_line_with("HANDLE ");
    let mut argv = vec![harness(), "send", "--lib", &lib, "--handle", &handle];
    argv.extend_from_slice(&flood);
    let mut send = h.container(1, "a", &argv);
    send.read_line_with("FLOODING");
    recv.read_line_with("FLOODING");
    h.kill_router(0);
    let t = Instant::now();
    let res = send.finish(Duration::from_secs(60)); // panics on a hang
    assert!(!res.0, "the sender must report the dead router");
    assert!(res.2.contains("ncclRemoteError"), "stderr: {}", res.2);
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    drop(recv);
}
