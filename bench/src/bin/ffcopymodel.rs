//! ffcopymodel: what N connections' bytes cost in memory alone, with no
//! transport at all (issue 17's "aggregate at N ≥ 0.9x N = 1", bounded).
//!
//! A model of the ring path's memory traffic between two containers on one
//! host, with nothing else: every connection has its sender's message
//! buffers (`--depth` × `--size`, as `ffbench ... scale` allocates them), a
//! ring of the size the router would give it (`ffrouter::state::
//! scaled_ring` over `--ring` and `--budget`, in connection order, as the
//! router sizes a tenant's same-host rings) and its receiver's buffers.
//! `--pairs` sender threads and as many receiver threads share the
//! connections (connection i on pair i mod P); on each pass over its
//! connections a sender copies up to `--depth` messages into each ring's
//! free slots, and a receiver copies every published message out, as the
//! drivers of `bench/scale.sh --drivers` do through the router's rings.
//! `--same-thread`: each of `--pairs` threads fills a ring and drains it
//! itself, one connection after the other (the placement where a sender
//! and its receiver share a core, as the scheduler often puts them). With
//! `--copies 1` the ring is the receiver's `--depth` buffers and the
//! receiver copies nothing (a zero-copy path: the sender's buffer straight
//! into the posted receive). One atomic counter pair per connection, no
//! locks, no system calls but a yield when a pass moved nothing: the
//! figure is a ceiling for any shared-memory transport whose connections
//! own their buffers. It prints, for each N in `--counts`, the bytes
//! delivered per second and the ratio to the first N, and appends
//! `ffcopymodel,copies=C,pairs=P,N,MB/s,MB/s` rows to `--csv`.

use clap::Parser;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "ffcopymodel", about = "memory-only ceiling for N connections' ring copies")]
struct Opts {
    /// Connection counts, one run each (the first is the reference).
    #[arg(long, default_value = "1 64 512", value_delimiter = ' ')]
    counts: Vec<usize>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 65536)]
    size: usize,
    /// Message buffers per connection on each side.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Largest ring (the router's --ring-size).
    #[arg(long, default_value_t = 4 << 20)]
    ring: usize,
    /// A tenant's ring budget (the router's --ring-budget).
    #[arg(long, default_value_t = ffrouter::state::LOCAL_RING_BUDGET)]
    budget: usize,
    /// Each thread both fills and drains its connections' rings, a ring at
    /// a time (the best case: what it reads back was just written from
    /// the same core), `--pairs` such threads instead of pairs.
    #[arg(long)]
    same_thread: bool,
    /// Copies per byte: 2 (through a ring) or 1 (buffer to buffer).
    #[arg(long, default_value_t = 2)]
    copies: u8,
    /// Sender threads, and as many receiver threads, sharing the connections.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// Seconds per count.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Append rows to this CSV file.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

/// One connection: the sender's buffers, its ring of `slots` message
/// slots, and the two counters a single-producer single-consumer ring
/// needs (the receiver's buffers are its receiver thread's).
struct Conn {
    src: Vec<Vec<u8>>,
    ring: *mut u8,
    slots: usize,
    size: usize,
    head: AtomicU64,
    tail: AtomicU64,
}

// SAFETY: `ring` points into `run`'s `rings` (`slots * size` bytes),
// which outlive every thread using them (std::thread::scope); slot
// `i % slots` is written only by the one sender thread while
// `head - tail < slots` and read only by the one receiver thread (or, with
// --same-thread, the same thread) while `tail < head`, with `head`
// published (Release) after the write and `tail` after the read: no byte
// is written and read at once. `src` is only read (by the sender).
unsafe impl Sync for Conn {}
unsafe impl Send for Conn {}

impl Conn {
    /// Sender: up to `burst` messages into free slots. Returns how many.
    fn push(&self, burst: usize) -> usize {
        let (head, tail) = (self.head.load(Ordering::Relaxed), self.tail.load(Ordering::Acquire));
        let n = (self.slots - (head - tail) as usize).min(burst);
        for k in 0..n as u64 {
            let m = &self.src[((head + k) % self.src.len() as u64) as usize];
            let at = ((head + k) % self.slots as u64) as usize * self.size;
            debug_assert!(at + self.size <= self.slots * self.size);
            // SAFETY: slot `head + k` is free (see `impl Sync`), inside the ring.
            unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), self.ring.add(at), m.len()) };
        }
        self.head.store(head + n as u64, Ordering::Release);
        n
    }

    /// Receiver: every published message out of the ring into the
    /// receiver's buffers (with one copy, the ring is those buffers: only
    /// the slots are released). Returns the bytes.
    fn pop(&self, copies: u8, dst: &mut [Vec<u8>]) -> usize {
        let (tail, head) = (self.tail.load(Ordering::Relaxed), self.head.load(Ordering::Acquire));
        if copies == 2 {
            for s in tail..head {
                let at = (s % self.slots as u64) as usize * self.size;
                let d = &mut dst[(s % dst.len() as u64) as usize];
                // SAFETY: slot `s` is published and not yet released (see `impl Sync`).
                unsafe { std::ptr::copy_nonoverlapping(self.ring.add(at), d.as_mut_ptr(), self.size) };
            }
        }
        self.tail.store(head, Ordering::Release);
        (head - tail) as usize * self.size
    }
}

/// Runs `n` connections for `secs` with `o.pairs` sender threads and as
/// many receiver threads (connection i on pair i mod P): bytes delivered
/// per second, once every receiver's buffer holds what its sender sent
/// (else an error naming the first that does not).
fn run(o: &Opts, n: usize) -> Result<f64, String> {
    let size = o.size;
    let ring = |i| match o.copies {
        1 => o.depth * size,
        _ => (ffrouter::state::scaled_ring(o.ring, o.budget, i) / size).max(1) * size,
    };
    let mut rings: Vec<Vec<u8>> = (0..n).map(|i| vec![1u8; ring(i)]).collect();
    let mut dsts: Vec<Vec<Vec<u8>>> = (0..n).map(|_| (0..o.depth).map(|_| vec![0u8; size]).collect()).collect();
    let conns: Vec<Conn> = rings
        .iter_mut()
        .enumerate()
        .map(|(i, r)| Conn {
            src: (0..o.depth).map(|d| vec![(i + d) as u8; size]).collect(),
            ring: r.as_mut_ptr(),
            slots: r.len() / size,
            size,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
        })
        .collect();
    let pairs = o.pairs.clamp(1, n);
    let stop = AtomicBool::new(false);
    let bytes = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let mut mine: Vec<Vec<&mut Vec<Vec<u8>>>> = (0..pairs).map(|_| Vec::new()).collect();
        for (i, d) in dsts.iter_mut().enumerate() {
            mine[i % pairs].push(d);
        }
        for (p, mut dst) in mine.into_iter().enumerate() {
            let (stop, bytes, conns) = (&stop, &bytes, &conns);
            if o.same_thread {
                s.spawn(move || {
                    let mut got = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for (c, d) in conns.iter().skip(p).step_by(pairs).zip(dst.iter_mut()) {
                            c.push(c.slots);
                            got += c.pop(o.copies, d) as u64;
                        }
                    }
                    bytes.fetch_add(got, Ordering::Relaxed);
                });
                continue;
            }
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut moved = 0;
                    for c in conns.iter().skip(p).step_by(pairs) {
                        moved += c.push(o.depth);
                    }
                    if moved == 0 {
                        std::thread::yield_now();
                    }
                }
            });
            s.spawn(move || {
                let mut got = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut moved = 0;
                    for (c, d) in conns.iter().skip(p).step_by(pairs).zip(dst.iter_mut()) {
                        moved += c.pop(o.copies, d);
                    }
                    got += moved as u64;
                    if moved == 0 {
                        std::thread::yield_now();
                    }
                }
                bytes.fetch_add(got, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(o.secs));
        stop.store(true, Ordering::Relaxed);
    });
    let rate = bytes.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    // Connection i's sender filled its buffer d with the byte i + d, and
    // message s went from buffer s mod depth to the receiver's buffer of
    // the same number (with one copy: the ring's slot of that number).
    for (i, (d, r)) in dsts.iter().zip(&rings).enumerate() {
        let got: Vec<&[u8]> = match o.copies {
            1 => r.chunks(size).collect(),
            _ => d.iter().map(|b| &b[..]).collect(),
        };
        let untouched = if o.copies == 1 { 1 } else { 0 };
        for (b, m) in got.iter().enumerate() {
            let want = (i + b) as u8;
            if !(m.iter().all(|&x| x == want) || m.iter().all(|&x| x == untouched)) {
                return Err(format!("connection {i}: the receiver's buffer {b} does not hold what was sent"));
            }
        }
        if conns[i].tail.load(Ordering::Relaxed) > o.depth as u64 && got.iter().enumerate().any(|(b, m)| m[0] != (i + b) as u8) {
            return Err(format!("connection {i}: a receiver's buffer was never written"));
        }
    }
    Ok(rate)
}

fn main() {
    let o = Opts::parse();
    if o.counts.is_empty() || o.counts.contains(&0) || o.size == 0 || o.depth == 0 || !(1..=2).contains(&o.copies) {
        eprintln!("ffcopymodel: give counts of 1 or more, a size and depth above 0, and --copies 1 or 2");
        std::process::exit(2);
    }
    if let Err(e) = report(&o) {
        eprintln!("ffcopymodel: {e}");
        std::process::exit(1);
    }
}

/// Runs every count and prints the table (and the CSV rows).
fn report(o: &Opts) -> Result<(), String> {
    let mut first = None;
    println!("| conns | thread pairs | copies | MB/s | / N = {} |", o.counts[0]);
    println!("|---:|---:|---:|---:|---:|");
    for &n in &o.counts {
        let r = run(o, n)? / 1e6;
        let base = *first.get_or_insert(r);
        println!("| {n} | {} | {} | {r:.0} | {:.2} |", o.pairs.min(n), o.copies, r / base);
        if let Some(p) = &o.csv {
            let line = format!("ffcopymodel,copies={},pairs={},{n},{r:.1},MB/s", o.copies, o.pairs);
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            writeln!(f, "{line}").map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placement and copy count moves bytes, and what arrives is
    /// what was sent (the check in `run` fails a model that skipped or
    /// mixed up copies).
    #[test]
    fn the_model_delivers_what_it_sends() {
        for copies in [1, 2] {
            for same_thread in [false, true] {
                let o = Opts::parse_from(["ffcopymodel", "--secs", "0.2", "--ring", "262144", "--copies", &copies.to_string(), "--pairs", "2"]);
                let o = Opts { same_thread, ..o };
                for n in [1, 5] {
                    let r = run(&o, n).unwrap_or_else(|e| panic!("copies {copies}, same thread {same_thread}, {n} connections: {e}"));
                    assert!(r > 0.0, "copies {copies}, same thread {same_thread}, {n} connections moved nothing");
                }
            }
        }
    }
}
