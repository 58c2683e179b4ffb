//! Scale: many connections between one pair of processes (`bench/scale.sh`).
//!
//! `ffbench connect scale --conns N` opens N connections one after the
//! other (timing each: connect latency), then streams --size messages on
//! all N at once, one thread each, and while they stream opens --probes
//! more connections one at a time (connect latency under load). `ffbench
//! serve scale --conns N` accepts them, receives on each (checking every
//! message's header: connection and sequence number), and once all N
//! stream measures what each receives over --secs, reports aggregate
//! bandwidth and Jain's fairness, and tells every sender to stop. The
//! connector then says `IDLE` and keeps its connections open, idle, for
//! --idle-secs (the script measures the routers meanwhile), and exits.
//!
//! Two ways to drive the connections while they stream, on both sides:
//! one thread per connection with blocking sends and receives (the
//! default), or `--drivers K`: K threads per side, each progressing its
//! share of the connections (connection i goes to thread i % K, at most
//! 128 per thread, so more threads start when N > 128 K) with nonblocking
//! requests, --depth sends (or receives) outstanding per connection
//! (default one), each with a buffer of its own, and
//! sleeping on all of its connections at once ([`ffcore::conn::wait_any`])
//! when a pass over them moved nothing, as a rank's progress thread or
//! NCCL's proxy drives many connections from one thread.
//!
//! Message buffers are registered (shadow memory, page-aligned, as in
//! `stream`) unless `--no-register`: on one host a message of 32 KiB or
//! more then goes from the sender's buffer straight into the posted
//! receive (one copy, no ring), across hosts the routers read and write
//! the buffers directly; unregistered, every byte goes through the rings.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffcore::futex::WAITV_MAX;
use ffcore::{Conn, Context, Handle, Listener, Req};

use crate::Buf;

const T: Option<Duration> = Some(Duration::from_secs(120));

/// Raises the soft open-file limit to the hard one (each connection holds
/// descriptors).
pub fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn header(b: &mut [u8], conn: u64, seq: u64) {
    b[..8].copy_from_slice(&conn.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn connect_timed(ctx: &Context, h: &Handle) -> ffcore::Result<(Conn, f64)> {
    let t = Instant::now();
    loop {
        if let Some(c) = ctx.connect(h)? {
            return Ok((c, t.elapsed().as_secs_f64() * 1e3));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How many driver threads for `conns` connections when `drivers` were
/// asked for (0: thread per connection): at most [`WAITV_MAX`] each.
fn driver_threads(conns: usize, drivers: usize) -> usize {
    if drivers == 0 {
        0
    } else {
        drivers.max(conns.div_ceil(WAITV_MAX)).min(conns.max(1))
    }
}

/// Driver threads sleep at most this long (to notice the end of the
/// measurement, and liveness).
const DRIVER_NAP: Duration = Duration::from_millis(100);

/// Driver sleeps that ended early (woken) and that ran out [`DRIVER_NAP`]:
/// a driver that keeps sleeping its naps out while its connections stream
/// was not woken when they could move (printed as `SLEEPS`).
static SLEPT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Sleeps on all the connections of `items` (via `conn`) at once.
fn sleep_on<T>(items: &mut [T], conn: impl Fn(&mut T) -> Option<&mut Conn>) -> ffcore::Result<()> {
    let mut cs: Vec<&mut Conn> = items.iter_mut().filter_map(conn).collect();
    if !cs.is_empty() {
        let t = Instant::now();
        if !ffcore::conn::wait_any(&mut cs, DRIVER_NAP)? {
            let out = t.elapsed() >= DRIVER_NAP;
            SLEPT[out as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn print_sleeps() {
    println!("SLEEPS woken={} naps_run_out={}", SLEPT[0].load(Ordering::Relaxed), SLEPT[1].load(Ordering::Relaxed));
}

/// A streaming connection on a sender's driver thread: up to
/// `bufs.len()` sends outstanding; stops posting once the receiver says
/// so, and is done when the last has completed.
struct Sending {
    c: Conn,
    i: u64,
    /// The next message's sequence number.
    seq: u64,
    /// Message `seq` goes from `bufs[seq % bufs.len()]`.
    bufs: Vec<Buf>,
    /// The sends outstanding, oldest first (they complete in order).
    reqs: VecDeque<Req>,
    stopping: bool,
    /// The receive of the receiver's word to stop (its buffer is `stop`).
    halt: Req,
    _stop: Box<[u8; 16]>,
    done: bool,
}

impl Sending {
    fn new(mut c: Conn, i: u64, bufs: Vec<Buf>) -> ffcore::Result<Sending> {
        let mut stop = Box::new([0u8; 16]);
        // SAFETY: `stop` is on the heap and lives in the same struct as the
        // connection: the request completes, or the connection (and its
        // requests) goes first (field order: `c` drops first).
        let halt = unsafe { c.irecv(stop.as_mut_ptr(), stop.len(), 2)? };
        Ok(Sending { c, i, seq: 0, bufs, reqs: VecDeque::new(), stopping: false, halt, _stop: stop, done: false })
    }

    /// Moves what can move now: true if anything did.
    fn step(&mut self) -> ffcore::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut moved = false;
        while let Some(&r) = self.reqs.front() {
            if self.c.test(r)?.is_none() {
                break;
            }
            self.reqs.pop_front();
            moved = true;
        }
        if !self.stopping && self.c.test(self.halt)?.is_some() {
            self.stopping = true;
            moved = true;
        }
        if self.stopping {
            self.done = self.reqs.is_empty();
            return Ok(moved);
        }
        while self.reqs.len() < self.bufs.len() {
            let k = self.bufs.len();
            let b = &mut self.bufs[(self.seq % k as u64) as usize];
            header(b.bytes_mut(), self.i, self.seq);
            // SAFETY: the buffer's last send completed (at most
            // `bufs.len()` are outstanding, in order), it is not touched
            // until this one does, and it outlives the connection (field
            // order).
            self.reqs.push_back(unsafe { self.c.isend(b.ptr(), b.len, 0)? });
            self.seq += 1;
            moved = true;
        }
        Ok(moved)
    }
}

/// A sender's driver thread: streams on all of `cs` until each was told to
/// stop.
fn drive_senders(mut cs: Vec<Sending>) -> ffcore::Result<Vec<(u64, Conn)>> {
    loop {
        let mut moved = false;
        for t in cs.iter_mut() {
            moved |= t.step()?;
        }
        if cs.iter().all(|t| t.done) {
            return Ok(cs.into_iter().map(|t| (t.i, t.c)).collect());
        }
        if !moved {
            sleep_on(&mut cs, |t| (!t.done).then_some(&mut t.c))?;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn send(ctx: &Context, h: &Handle, conns: usize, size: usize, idle: f64, probes: usize, drivers: usize, depth: usize, register: bool) -> ffcore::Result<()> {
    let size = size.max(16);
    let t0 = Instant::now();
    let mut cs = Vec::with_capacity(conns);
    let mut lat = Vec::with_capacity(conns);
    for i in 0..conns {
        let (mut c, ms) = connect_timed(ctx, h)?;
        // Says which connection it is (the server numbers them by this).
        let mut b = vec![0u8; 16];
        header(&mut b, i as u64, u64::MAX);
        c.send(&b, 1, T)?;
        cs.push(c);
        lat.push(ms);
    }
    let all = t0.elapsed().as_secs_f64();
    println!(
        "CONNECTED conns={conns} all_s={all:.3} connect_ms_p50={:.3} connect_ms_p99={:.3} connect_ms_max={:.3}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    let k = driver_threads(conns, drivers);
    println!("STREAMING drivers={k}");
    // Every thread gives its connections back once told to stop.
    let depth = if k > 0 { depth.max(1) } else { 1 };
    let mut bufs = (0..conns * depth).map(|_| Buf::new(ctx, size, 0, register, |b| b.fill(0x5a))).collect::<ffcore::Result<Vec<Buf>>>()?;
    type Sent = ffcore::Result<Vec<(u64, Conn)>>;
    let threads: Vec<std::thread::JoinHandle<Sent>> = if k > 0 {
        let mut groups: Vec<Vec<Sending>> = (0..k).map(|_| Vec::new()).collect();
        for (i, c) in cs.into_iter().enumerate() {
            let mine = bufs.drain(..depth).collect();
            groups[i % k].push(Sending::new(c, i as u64, mine)?);
        }
        groups.into_iter().map(|g| std::thread::spawn(move || drive_senders(g))).collect()
    } else {
        cs.into_iter().zip(bufs).enumerate().map(|(i, (mut c, mut b))| {
            std::thread::spawn(move || -> ffcore::Result<Vec<(u64, Conn)>> {
                let mut stop = [0u8; 16];
                // SAFETY: `stop` outlives the request: it completes (tested
                // below) before the thread returns, or the connection fails.
                let halt = unsafe { c.irecv(stop.as_mut_ptr(), stop.len(), 2)? };
                let mut seq = 0u64;
                loop {
                    header(b.bytes_mut(), i as u64, seq);
                    c.send(b.bytes(), 0, T)?;
                    seq += 1;
                    if c.test(halt)?.is_some() {
                        return Ok(vec![(i as u64, c)]);
                    }
                }
            })
        })
        .collect()
    };
    probe(ctx, h, probes)?;
    let mut cs = Vec::new();
    for t in threads {
        cs.extend(t.join().expect("a sender thread panicked")?);
    }
    print_sleeps();
    println!("IDLE");
    std::thread::sleep(Duration::from_secs_f64(idle));
    drop(cs);
    Ok(())
}

/// Connects while everything streams (connect latency under load).
fn probe(ctx: &Context, h: &Handle, probes: usize) -> ffcore::Result<()> {
    std::thread::sleep(Duration::from_millis(500));
    let mut plat = Vec::new();
    for _ in 0..probes {
        let (c, ms) = connect_timed(ctx, h)?;
        plat.push(ms);
        drop(c);
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "PROBED probes={probes} busy_connect_ms_p50={:.3} busy_connect_ms_p99={:.3} busy_connect_ms_max={:.3}",
        pct(&mut plat.clone(), 0.5),
        pct(&mut plat.clone(), 0.99),
        pct(&mut plat, 1.0)
    );
    Ok(())
}

/// A streaming connection on a receiver's driver thread: a receive posted
/// on each of `bufs`, every message's header checked.
struct Receiving {
    c: Conn,
    i: usize,
    /// The next message's sequence number: it lands in
    /// `bufs[seq % bufs.len()]`.
    seq: u64,
    bufs: Vec<Buf>,
    /// The receives posted, oldest first (they complete in order).
    reqs: VecDeque<Req>,
    told: bool,
    /// The sender closed (or the connection failed): nothing more to do.
    gone: bool,
}

impl Receiving {
    fn step(&mut self, got: &AtomicU64, bad: &AtomicU64, done: &AtomicBool) -> bool {
        if self.gone {
            return false;
        }
        if !tell(&mut self.c, &mut self.told, done) {
            self.gone = true;
            return true;
        }
        // Post a receive on every buffer that has none (message `seq + j`
        // lands in buffer `(seq + j) % k`).
        let k = self.bufs.len();
        while self.reqs.len() < k {
            let b = &mut self.bufs[((self.seq + self.reqs.len() as u64) % k as u64) as usize];
            // SAFETY: the buffer (heap or shadow memory) has no receive
            // posted, is not touched until this one completes, and
            // outlives the connection (field order).
            match unsafe { self.c.irecv(b.mut_ptr(), b.len, 0) } {
                Ok(r) => self.reqs.push_back(r),
                Err(_) => {
                    self.gone = true;
                    return true;
                }
            }
        }
        let mut moved = false;
        while let Some(&r) = self.reqs.front() {
            match self.c.test(r) {
                Ok(None) => break,
                Ok(Some(n)) => {
                    self.reqs.pop_front();
                    let b = self.bufs[(self.seq % k as u64) as usize].bytes();
                    let (ci, s) = (u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..16].try_into().unwrap()));
                    if n != b.len() || ci != self.i as u64 || s != self.seq {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    self.seq += 1;
                    got.fetch_add(n as u64, Ordering::Relaxed);
                    moved = true;
                }
                Err(_) => {
                    // The sender closed.
                    self.reqs.clear();
                    self.gone = true;
                    return true;
                }
            }
        }
        moved
    }
}

/// A receiver's driver thread: receives on all of `cs` until their senders
/// close.
fn drive_receivers(mut cs: Vec<Receiving>, got: &[AtomicU64], bad: &AtomicU64, done: &AtomicBool) -> ffcore::Result<()> {
    loop {
        let mut moved = false;
        for t in cs.iter_mut() {
            moved |= t.step(&got[t.i], bad, done);
        }
        if cs.iter().all(|t| t.gone) {
            return Ok(());
        }
        if !moved {
            sleep_on(&mut cs, |t| (!t.gone).then_some(&mut t.c))?;
        }
    }
}

/// Once the measurement is `done`, tells the sender (once) to stop after
/// its next message; false if the connection failed.
fn tell(c: &mut Conn, told: &mut bool, done: &AtomicBool) -> bool {
    if !*told && done.load(Ordering::Relaxed) {
        *told = true;
        return c.send(&[0u8; 16], 2, T).is_ok();
    }
    true
}

#[allow(clippy::too_many_arguments)]
pub fn recv(ctx: &Context, l: Listener, conns: usize, size: usize, secs: f64, drivers: usize, depth: usize, register: bool) -> ffcore::Result<()> {
    let k = driver_threads(conns, drivers);
    let mut groups: Vec<Vec<Receiving>> = (0..k).map(|_| Vec::new()).collect();
    let size = size.max(16);
    let got: Arc<Vec<AtomicU64>> = Arc::new((0..conns).map(|_| AtomicU64::new(0)).collect());
    let bad = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut accepted = 0usize;
    let mut threads = Vec::new();
    // The first `conns` are the streams; later ones (probes) are accepted
    // and dropped by a thread of their own.
    while accepted < conns {
        let mut c = l.accept_timeout(Duration::from_secs(120))?;
        let mut b = vec![0u8; 16];
        c.recv(&mut b, 1, T)?;
        let i = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        if i >= conns {
            return Err(ffcore::Error::InvalidArgument(format!("connection number {i}")));
        }
        if k > 0 {
            let bufs = (0..depth.max(1)).map(|_| Buf::new(ctx, size, 0, register, |_| {})).collect::<ffcore::Result<Vec<Buf>>>()?;
            groups[i % k].push(Receiving { c, i, seq: 0, bufs, reqs: VecDeque::new(), told: false, gone: false });
            accepted += 1;
            continue;
        }
        let mut b = Buf::new(ctx, size, 0, register, |_| {})?;
        let (got, bad, done) = (got.clone(), bad.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            let mut told = false;
            loop {
                // SAFETY: `b` outlives the request: it is waited for below
                // (a timeout leaves it posted and waits again); on an error
                // the connection is done with.
                let Ok(r) = (unsafe { c.irecv(b.mut_ptr(), b.len, 0) }) else { return };
                let n = loop {
                    match c.wait(r, Some(Duration::from_millis(100))) {
                        Ok(n) => break n,
                        Err(ffcore::Error::Timeout(_)) => {}
                        Err(_) => return, // the sender closed
                    }
                    if !tell(&mut c, &mut told, &done) {
                        return;
                    }
                };
                if !tell(&mut c, &mut told, &done) {
                    return;
                }
                let h = b.bytes();
                let (ci, s) = (u64::from_le_bytes(h[..8].try_into().unwrap()), u64::from_le_bytes(h[8..16].try_into().unwrap()));
                if n != size || ci != i as u64 || s != seq {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                got[i].fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
        accepted += 1;
    }
    for g in groups {
        let (got, bad, done) = (got.clone(), bad.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            if let Err(e) = drive_receivers(g, &got, &bad, &done) {
                eprintln!("ffbench: a receiving driver failed: {e}");
            }
        }));
    }
    std::thread::spawn(move || while l.accept_timeout(Duration::from_secs(600)).is_ok() {});
    // Every connection streams: warm up, then measure.
    while got.iter().any(|g| g.load(Ordering::Relaxed) == 0) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let a: Vec<u64> = got.iter().map(|g| g.load(Ordering::Relaxed)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b: Vec<u64> = got.iter().map(|g| g.load(Ordering::Relaxed)).collect();
    let dt = t.elapsed().as_secs_f64();
    let x: Vec<f64> = a.iter().zip(&b).map(|(a, b)| (b - a) as f64 / dt / 1e6).collect();
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    let jain = if sq > 0.0 { sum * sum / (x.len() as f64 * sq) } else { 0.0 };
    let min = x.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "RESULT mode=scale conns={conns} drivers={k} size={size} secs={dt:.2} agg_mb_per_s={sum:.1} jain={jain:.4} min_mb_per_s={min:.3} bad_messages={}",
        bad.load(Ordering::Relaxed)
    );
    // Each connection's rate, in the order they were accepted (for looking
    // at who got what; the script reads only RESULT).
    let each: Vec<String> = x.iter().map(|v| format!("{v:.2}")).collect();
    println!("EACH mb_per_s {}", each.join(" "));
    print_sleeps();
    done.store(true, Ordering::Relaxed);
    // The senders stop, sit idle, and close.
    for t in threads {
        let _ = t.join();
    }
    if bad.load(Ordering::Relaxed) != 0 {
        return Err(ffcore::Error::InvalidArgument(format!("{} bad messages", bad.load(Ordering::Relaxed))));
    }
    Ok(())
}
