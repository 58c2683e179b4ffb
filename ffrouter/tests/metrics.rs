//! Router counters: Prometheus text on --metrics-addr and `ffrouter stats`.

use std::io::{Read, Write};
use std::time::Duration;

use fftestkit::{bin, RouterProc};

fn scrape(addr: &str) -> String {
    scrape_with(addr, "")
}

fn scrape_with(addr: &str, headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{headers}\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, prefix: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn metrics_count_tenant_and_connection_traffic() {
    let port = 19000 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let r = RouterProc::start(&["a", "b"], &["--metrics-addr", &addr]);
    let server = r.context("a");
    let client = r.context("a");
    let l = server.listen().unwrap();
    let mut c = client.connect(&l.handle()).unwrap().unwrap();
    let mut s = l.accept().unwrap().unwrap();
    let mut buf = vec![0u8; 1000];
    for _ in 0..7 {
        c.send(&[1u8; 1000], 0, None).unwrap();
        s.recv(&mut buf, 0, None).unwrap();
    }
    c.send(&[2u8; 100], 0, None).unwrap(); // left queued: never received
    // A refused request counts as an error for tenant b.
    assert!(r.context("b").connect(&l.handle()).is_err());
    fftestkit::wait_for(|| std::net::TcpStream::connect(&addr).is_ok(), Duration::from_secs(5), "metrics port");
    let m = scrape(&addr);
    assert!(m.contains("200 OK"), "{m}");
    assert_eq!(value(&m, "ff_tenant_connections{tenant=\"a\"}"), 1);
    assert_eq!(value(&m, "ff_tenant_clients{tenant=\"a\"}"), 2);
    // What clients write into shared memory is labelled as theirs.
    assert_eq!(value(&m, "ff_tenant_sent_messages_total{tenant=\"a\",reported_by=\"client\"}"), 8);
    assert_eq!(value(&m, &format!("ff_conn_sent_messages_total{{tenant=\"a\",conn=\"{}\",side=\"0\",reported_by=\"client\"}}", c.id())), 8);
    assert_eq!(value(&m, &format!("ff_conn_sent_messages_total{{tenant=\"a\",conn=\"{}\",side=\"1\",reported_by=\"client\"}}", c.id())), 0);
    // 100 payload bytes + 32 header, rounded to 64-byte records.
    assert_eq!(value(&m, &format!("ff_conn_queue_depth_bytes{{tenant=\"a\",conn=\"{}\",side=\"0\",reported_by=\"client\"}}", c.id())), 192);
    assert!(value(&m, "ff_tenant_errors_total{tenant=\"b\"}") >= 1);
    assert_eq!(value(&m, "ff_tenant_connections{tenant=\"b\"}"), 0);
    // Whether router threads found a busy process on their cores (a
    // counter: how often depends on the machine).
    value(&m, "ff_router_cpu_contended_total{} ");
    // The same counters from the command line.
    let out = std::process::Command::new(bin("ffrouter")).args(["stats", "--socket"]).arg(r.socket("a")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("connections 1") && text.contains("sent_messages 8") && text.contains("queued_bytes 192"), "{text}");
    drop((c, s));
}

#[test]
fn metrics_beyond_loopback_need_a_token_and_get_only_with_it() {
    let port = 20000 + (std::process::id() % 1000) as u16;
    // Every tenant's counters on an address containers may reach: refused.
    let out = std::process::Command::new(bin("ffrouter"))
        .args(["--tenant", "a=/tmp/ffmetrics-never/a.sock", "--metrics-addr", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--metrics-token-file"), "{err}");
    let dir = std::env::temp_dir().join(format!("ffmetrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "a-scraper-token-of-enough-length\n").unwrap();
    let r = RouterProc::start(&["a"], &["--metrics-addr", &format!("0.0.0.0:{port}"), "--metrics-token-file", token.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    fftestkit::wait_for(|| std::net::TcpStream::connect(&addr).is_ok(), Duration::from_secs(5), "metrics port");
    let _ctx = r.context("a");
    assert!(scrape(&addr).contains("401"), "no token");
    assert!(scrape_with(&addr, "Authorization: Bearer wrong-token-of-enough-length\r\n").contains("401"), "wrong token");
    let m = scrape_with(&addr, "Authorization: Bearer a-scraper-token-of-enough-length\r\n");
    assert!(m.contains("200 OK") && m.contains("ff_tenant_clients{tenant=\"a\"} 1"), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}
