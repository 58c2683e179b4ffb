//! `/metrics` keeps answering after the router ran out of descriptors.
//! Alone in its test binary: it lowers the process's open-file limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

fn scrape(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("an answer");
    out
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[test]
fn metrics_answer_again_once_descriptors_are_free() {
    let router = ffrouter::Router::new(ffrouter::Limits::default());
    let addr: SocketAddr = ffrouter::metrics::serve("127.0.0.1:0", &router, None).unwrap();
    assert!(scrape(&mut TcpStream::connect(addr).unwrap()).contains("200 OK"));
    // Every descriptor taken but one, which the next scrape's socket
    // takes: the server's accept then fails with EMFILE.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() + 32, hard).unwrap();
    let mut held = Vec::new();
    let err = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    held.pop();
    let mut s = TcpStream::connect(addr).unwrap();
    // Let the server fail to accept it (a few times).
    std::thread::sleep(Duration::from_millis(500));
    held.clear();
    assert!(scrape(&mut s).contains("200 OK"), "the scrape that met EMFILE is answered");
    let again = scrape(&mut TcpStream::connect(addr).unwrap());
    assert!(again.contains("200 OK") && again.contains("text/plain"), "{again}");
}
