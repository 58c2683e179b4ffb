//! UCP programs (tests/ucp/ffucp.c, compiled here against the installed
//! libucp) over the ff transport alone (`UCX_TLS=ff`), one router, each
//! process its own UCP context:
//! - peer failure under `UCP_ERR_HANDLING_MODE_PEER`: a peer SIGKILLed
//!   while a rendezvous send to it is outstanding gives the survivor's error
//!   callback within 5 s, fails that send, and the survivor goes on with
//!   its other peer;
//! - wakeup: a worker asleep in `ucp_worker_wait`, or in epoll on
//!   `ucp_worker_get_efd` after `ucp_worker_arm`, with no endpoint of its
//!   own yet, is woken by a sender's first message (a new connection), and
//!   both sides complete a rendezvous message sleeping between events; the
//!   sleeper uses almost no CPU while it waits.
//!
//! Needs UCX 1.13 (libucx-dev, gcc) and a built workspace (cargo build
//! --workspace).

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

use fftestkit::RouterProc;

/// ffucp, compiled once per test binary.
fn ffucp() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_ucp_program("ffucp")).clone()
}

/// One ffucp process: its stdin, and its stdout lines as they come.
struct Prog {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Prog {
    fn start(router: &RouterProc, args: &[&str]) -> Prog {
        let mut child = Command::new(ffucp())
            .args(args)
            .env("LD_PRELOAD", common::lib())
            .env("UCX_TLS", "ff")
            .env("FF_ROUTER_SOCKET", router.socket("a"))
            .env("UCX_WARN_UNUSED_ENV_VARS", "n")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ffucp");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Prog { child, stdin, lines, seen: Vec::new() }
    }

    /// The next line starting with `prefix` (30 s at most).
    fn line(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => {
                    assert!(!l.starts_with("FAIL"), "ffucp: {l} (after {:?})", self.seen);
                    self.seen.push(l);
                }
                Err(e) => panic!("no {prefix:?} line from ffucp ({e}); before: {:?}", self.seen),
            }
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    fn addr(&mut self) -> String {
        self.line("ADDR ")[5..].to_string()
    }

    fn exit_ok(mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "ffucp exited with {st}; output {:?}", self.seen);
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` fields of a result line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('='))).unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn num(line: &str, key: &str) -> f64 {
    field(line, key).parse().unwrap_or_else(|_| panic!("{key} in {line:?}"))
}

#[test]
fn a_killed_peer_reaches_the_error_handler_and_the_survivor_goes_on() {
    let router = RouterProc::start(&["a"], &[]);
    let mut s = Prog::start(&router, &["survivor"]);
    let sa = s.addr();
    let mut peers: Vec<Prog> = (0..2).map(|_| Prog::start(&router, &["peer"])).collect();
    for p in peers.iter_mut() {
        let pa = p.addr();
        p.say(&format!("PEER {sa}"));
        s.say(&format!("PEER {pa}"));
    }
    // Both peers answered; a 1 MiB rendezvous send to peer 0 is under way
    // (it never posts a receive for it).
    let l = s.line("PINGED");
    assert_eq!(field(&l, "outstanding"), "1", "{l}");
    let mut dead = peers.remove(0);
    dead.child.kill().unwrap(); // SIGKILL
    dead.child.wait().unwrap();
    s.say("KILLED");
    let l = s.line("ERRCB");
    assert_eq!(field(&l, "fired"), "1", "the error callback ran once for the dead peer: {l}");
    assert!(num(&l, "ms") <= 5000.0, "within 5 s: {l}");
    assert_eq!(field(&l, "other"), "0", "not for the live peer: {l}");
    assert!(l.contains("Connection reset") || l.contains("Endpoint timeout"), "{l}");
    let l = s.line("OUTSTANDING");
    assert!(!l.contains(" Success") && !l.contains("Timed out"), "the send to the dead peer failed, promptly: {l}");
    let l = s.line("SURVIVED");
    assert_eq!(l, "SURVIVED pings=100 errcb_other=0 errcb_dead=1");
    s.exit_ok();
    peers.remove(0).exit_ok();
}

fn wakeup(how: &str) {
    let router = RouterProc::start(&["a"], &[]);
    let mut r = Prog::start(&router, &["waitrecv", how]);
    let ra = r.addr();
    let mut s = Prog::start(&router, &["send", how]);
    s.say(&format!("PEER {ra}"));
    r.line("WAITING");
    // The receiver has no endpoint and nothing to do: it must sleep.
    std::thread::sleep(Duration::from_secs(1));
    s.say("GO");
    let l = r.line("GOT small");
    assert_eq!(field(&l, "small"), "42", "{l}");
    assert!(num(&l, "ms") >= 900.0, "it waited for the message: {l}");
    assert!(num(&l, "waits") >= 1.0, "it slept in {how}: {l}");
    // A busy-polling worker burns the whole second.
    assert!(num(&l, "cpu_ms") < 300.0, "asleep, not polling: {l}");
    let l = r.line("GOT big");
    assert_eq!(field(&l, "bad"), "0", "rendezvous data intact: {l}");
    s.line("SENT");
    r.say("BYE");
    s.exit_ok();
    r.exit_ok();
}

#[test]
fn a_worker_in_ucp_worker_wait_is_woken_by_messages() {
    wakeup("wait");
}

#[test]
fn a_worker_in_epoll_on_its_efd_is_woken_by_messages() {
    wakeup("efd");
}
