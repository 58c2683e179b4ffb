//! Router counters: Prometheus text on --metrics-addr and `ffrouter stats`.

use std::io::{Read, Write};
use std::time::Duration;

use fftestkit::{bin, RouterProc};

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
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
    assert_eq!(value(&m, "ff_tenant_sent_messages_total{tenant=\"a\"}"), 8);
    assert_eq!(value(&m, &format!("ff_conn_sent_messages_total{{tenant=\"a\",conn=\"{}\",side=\"0\"}}", c.id())), 8);
    assert_eq!(value(&m, &format!("ff_conn_sent_messages_total{{tenant=\"a\",conn=\"{}\",side=\"1\"}}", c.id())), 0);
    // 100 payload bytes + 32 header, rounded to 64-byte records.
    assert_eq!(value(&m, &format!("ff_conn_queue_depth_bytes{{tenant=\"a\",conn=\"{}\",side=\"0\"}}", c.id())), 192);
    assert!(value(&m, "ff_tenant_errors_total{tenant=\"b\"}") >= 1);
    assert_eq!(value(&m, "ff_tenant_connections{tenant=\"b\"}"), 0);
    // The same counters from the command line.
    let out = std::process::Command::new(bin("ffrouter")).args(["stats", "--socket"]).arg(r.socket("a")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("connections 1") && text.contains("sent_messages 8") && text.contains("queued_bytes 192"), "{text}");
    drop((c, s));
}
