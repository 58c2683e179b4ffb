//! UCP atomics over ff under contention, checked against a sequential
//! model: an owner container registers words (tests/ucp/ffamo.c) and does
//! CPU atomics on some of them while two hammer containers (UCX_TLS=ff, so
//! only ff can carry them) do 32- and 64-bit fetch-add, cswap, swap and
//! xor/or/and on the same words. Some words are in the registration's
//! partial first page (private to the owner: ff sends those operations to
//! the owner, which performs them in its progress), the others in a whole
//! page of shadow memory (a peer on the owner's host operates on them
//! through its mapping). Every operation and the value it returned is
//! logged; the test finds, for every word, a sequential order of all the
//! operations that explains every returned value, each process's program
//! order and the final value:
//! - counters (fetch-add 1, cswap v -> v+1): the increments' old values are
//!   exactly 0..final, each once; a failed cswap saw a value the counter
//!   had; each process saw the counter grow;
//! - bits words: each process owns some bits and always finds them as it
//!   left them (a lost update of another process's bits would show);
//! - the swap word: the values form one chain from 0 to the final value,
//!   each process's swaps in its program order.
//!
//! Once with all three on one host, once with the owner and one hammer on
//! one emulated host and the other hammer on a second (ffrouter's
//! TwoHosts): there, every operation of the far hammer is a message the
//! owner serves, racing the near hammer's direct atomics and the owner's
//! own. Needs root, UCX 1.13 (libucx-dev, gcc) and a built workspace.

#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use fftestkit::{Container, RouterProc, Spec};

fn ffamo() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_ucp_program("ffamo")).clone()
}

fn env() -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), common::lib().to_str().unwrap().into()),
        ("UCX_TLS".into(), "ff".into()),
        ("UCX_WARN_UNUSED_ENV_VARS".into(), "n".into()),
        // The owner's words are malloc'd: moved onto shadow memory (a
        // single-threaded owner is safe), so peers on its host reach them
        // through the mapping.
        ("UCX_FF_SHADOW_MOVE".into(), "y".into()),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    op: char,
    value: u64,
    compare: u64,
    ret: u64,
}

/// A process's log: word -> its operations on it, in program order.
type Log = BTreeMap<char, Vec<Rec>>;

fn parse(path: &Path) -> Log {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut log = Log::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 5, "{line:?}");
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        let word = f[0].chars().next().unwrap();
        log.entry(word).or_default().push(Rec { op: f[1].chars().next().unwrap(), value: n(2), compare: n(3), ret: n(4) });
    }
    log
}

/// The `FINAL` line's values.
fn finals(line: &str) -> HashMap<char, u64> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).filter(|(k, _)| k.len() == 1).map(|(k, v)| (k.chars().next().unwrap(), v.parse().unwrap())).collect()
}

/// A counter (fetch-add 1 and cswap v -> v+1 only): see the module docs.
/// Returns the number of increments and how often the serialization
/// switches between processes (contention, for the report).
fn check_counter(word: char, logs: &[(&str, &Log)], fin: u64) -> (u64, u64) {
    let mut incs: Vec<(u64, usize)> = Vec::new();
    let mut failed: Vec<u64> = Vec::new();
    for (p, (name, log)) in logs.iter().enumerate() {
        let Some(recs) = log.get(&word) else { continue };
        let mut floor = 0u64;
        for (i, r) in recs.iter().enumerate() {
            let inc = match r.op {
                'a' => {
                    assert_eq!(r.value, 1, "{word}: only increments");
                    true
                }
                'c' => {
                    assert_eq!(r.value, r.compare + 1, "{word}: cswap v -> v+1 only");
                    r.ret == r.compare
                }
                o => panic!("{word}: unexpected op {o}"),
            };
            assert!(r.ret >= floor, "{word}: {name}'s op {i} returned {} after it had seen {floor} (program order)", r.ret);
            floor = r.ret + u64::from(inc);
            if inc {
                incs.push((r.ret, p));
            } else {
                failed.push(r.ret);
            }
        }
    }
    incs.sort_unstable();
    for (i, &(old, _)) in incs.iter().enumerate() {
        assert_eq!(old, i as u64, "{word}: increments' old values are not 0..n each once (lost or repeated update)");
    }
    assert_eq!(fin, incs.len() as u64, "{word}: final value vs number of increments");
    assert!(failed.iter().all(|&v| v < fin), "{word}: a failed cswap saw a value the counter never had");
    let switches = incs.windows(2).filter(|w| w[0].1 != w[1].1).count() as u64;
    (incs.len() as u64, switches)
}

/// A bits word: each process owns `masks[p]` and only changes those bits.
fn check_bits(word: char, logs: &[(&str, &Log)], masks: &[u64], fin: u64, width: u32) {
    let wmask = if width == 32 { u32::MAX as u64 } else { u64::MAX };
    let mut all = 0u64;
    for ((name, log), &mask) in logs.iter().zip(masks) {
        let mut mine = 0u64;
        for (i, r) in log.get(&word).into_iter().flatten().enumerate() {
            assert_eq!(r.ret & mask, mine, "{word}: {name}'s op {i} ({}) found its own bits changed", r.op);
            let op = match r.op {
                'x' => ffcore::AtomicOp::Xor,
                'o' => ffcore::AtomicOp::Or,
                'n' => ffcore::AtomicOp::And,
                o => panic!("{word}: unexpected op {o}"),
            };
            let w = if width == 32 { ffcore::Width::W32 } else { ffcore::Width::W64 };
            let after = op.next(r.ret, r.value, 0, w);
            assert_eq!(after & !mask & wmask, r.ret & !mask & wmask, "{word}: {name}'s op {i} touches bits it does not own");
            mine = after & mask;
        }
        assert_eq!(fin & mask, mine, "{word}: {name}'s bits at the end");
        all |= mask;
    }
    assert_eq!(fin & !all, 0, "{word}: bits nobody set");
}

/// The swap word: one chain 0 -> ... -> final through every swap, each
/// process's swaps in program order.
fn check_swaps(word: char, logs: &[(&str, &Log)], fin: u64) -> usize {
    // old value -> (process, index in its log, new value)
    let mut by_old: HashMap<u64, (usize, usize, u64)> = HashMap::new();
    let mut n = 0;
    for (p, (name, log)) in logs.iter().enumerate() {
        for (i, r) in log.get(&word).into_iter().flatten().enumerate() {
            assert_eq!(r.op, 's');
            assert!(by_old.insert(r.ret, (p, i, r.value)).is_none(), "{word}: {name}'s swap {i} returned {:#x}, which another swap returned too", r.ret);
            n += 1;
        }
    }
    let mut next_of = vec![0usize; logs.len()];
    let mut cur = 0u64;
    for step in 0..n {
        let Some(&(p, i, new)) = by_old.get(&cur) else {
            panic!("{word}: the chain breaks after {step} swaps at {cur:#x}");
        };
        assert_eq!(i, next_of[p], "{word}: {}'s swaps out of program order", logs[p].0);
        next_of[p] += 1;
        cur = new;
    }
    assert_eq!(cur, fin, "{word}: the chain ends at the final value");
    n
}

fn check_all(owner: &Log, h: [&Log; 2], fin: &HashMap<char, u64>) -> String {
    let all = [("owner", owner), ("hammer0", h[0]), ("hammer1", h[1])];
    let mut report = String::new();
    for w in ['A', 'B', 'C', 'E'] {
        let (n, switches) = check_counter(w, &all, fin[&w]);
        report += &format!("{w}: {n} increments, {switches} switches; ");
        // Both hammers' operations interleaved with each other's (not one
        // after the other): the test exercised contention.
        let hammers = [("hammer0", h[0]), ("hammer1", h[1])];
        let mut seq: Vec<(u64, usize)> = Vec::new();
        for (p, (_, log)) in hammers.iter().enumerate() {
            seq.extend(log[&w].iter().filter(|r| r.op == 'a').map(|r| (r.ret, p)));
        }
        seq.sort_unstable();
        let hs = seq.windows(2).filter(|x| x[0].1 != x[1].1).count();
        assert!(hs >= 2, "{w}: the two hammers' operations did not interleave ({hs} switches): no contention was tested");
    }
    check_bits('D', &all, &[0xff << 16, 0xff, 0xff << 8], fin[&'D'], 64);
    check_bits('X', &all, &[0, 0xff, 0xff << 8], fin[&'X'], 32);
    let swaps = check_swaps('S', &all, fin[&'S']);
    report += &format!("S: {swaps} swaps in one chain");
    report
}

struct Run {
    dir: PathBuf,
}

impl Run {
    fn new(tag: &str) -> Run {
        let dir = std::env::temp_dir().join(format!("ffamo-{tag}-{}-{}", std::process::id(), fftestkit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        Run { dir }
    }
    fn log(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// Runs the owner and both hammers (`spawn(host, argv)` starts a container
/// on host 0 or 1), then checks everything.
fn contention(run: &Run, hosts: [usize; 3], iters: [u64; 2], spawn: impl Fn(usize, &[&str]) -> Container) {
    let bin = ffamo();
    let bin = bin.to_str().unwrap();
    let olog = run.log("owner.log");
    let mut owner = spawn(hosts[0], &[bin, "owner", &olog]);
    let addr = owner.read_line_with("ADDR ");
    let rkey = owner.read_line_with("RKEY ");
    let base = owner.read_line_with("BASE ");
    let logs = [run.log("h0.log"), run.log("h1.log")];
    let its = iters.map(|n| n.to_string());
    let hammers: Vec<Container> = (0..2).map(|i| spawn(hosts[1 + i], &[bin, "hammer", &i.to_string(), &addr, &rkey, &base, &its[i], &logs[i]])).collect();
    for h in hammers {
        let (ok, out, err) = h.finish(Duration::from_secs(240));
        assert!(ok && out.contains("DONE"), "hammer failed: {out}\n{err}");
    }
    let fin = owner.read_line_with("FINAL ");
    let (ok, _, err) = owner.finish(Duration::from_secs(30));
    assert!(ok, "owner failed: {err}");
    let report = check_all(&parse(Path::new(&olog)), [&parse(Path::new(&logs[0])), &parse(Path::new(&logs[1]))], &finals(&fin));
    eprintln!("FINAL {fin}\n{report}");
}

#[test]
fn atomics_from_two_containers_on_one_host_are_sequentially_consistent() {
    let router = RouterProc::start(&["a"], &[]);
    let run = Run::new("one");
    let dir = router.tenant_dir("a");
    contention(&run, [0, 0, 0], [3000, 3000], |_, argv| Container::run_spec(&Spec { socket_dir: Some(&dir), env: env(), ..Spec::default() }, argv));
}

#[test]
fn atomics_across_two_hosts_are_sequentially_consistent() {
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let run = Run::new("two");
    // Owner and hammer 0 on host 0 (direct atomics on the shared page),
    // hammer 1 on host 1 (every operation a message the owner serves).
    contention(&run, [0, 0, 1], [1500, 300], |host, argv| h.container_env(host, "a", argv, env()));
}
