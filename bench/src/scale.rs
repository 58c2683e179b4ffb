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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffcore::{Conn, Context, Handle, Listener};

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

pub fn send(ctx: &Context, h: &Handle, conns: usize, size: usize, idle: f64, probes: usize) -> ffcore::Result<()> {
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
    println!("STREAMING");
    let threads: Vec<_> = cs
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || -> ffcore::Result<Conn> {
                let mut b = vec![0x5au8; size];
                let mut stop = [0u8; 16];
                // SAFETY: `stop` outlives the request: it completes (tested
                // below) before the thread returns, or the connection fails.
                let halt = unsafe { c.irecv(stop.as_mut_ptr(), stop.len(), 2)? };
                let mut seq = 0u64;
                loop {
                    header(&mut b, i as u64, seq);
                    c.send(&b, 0, T)?;
                    seq += 1;
                    if c.test(halt)?.is_some() {
                        return Ok(c);
                    }
                }
            })
        })
        .collect();
    // Connects while everything streams.
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
    let mut cs = Vec::new();
    for t in threads {
        cs.push(t.join().expect("a sender thread panicked")?);
    }
    println!("IDLE");
    std::thread::sleep(Duration::from_secs_f64(idle));
    drop(cs);
    Ok(())
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

pub fn recv(l: Listener, conns: usize, size: usize, secs: f64) -> ffcore::Result<()> {
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
        let (got, bad, done) = (got.clone(), bad.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let mut b = vec![0u8; size];
            let mut seq = 0u64;
            let mut told = false;
            loop {
                // SAFETY: `b` outlives the request: it is waited for below
                // (a timeout leaves it posted and waits again); on an error
                // the connection is done with.
                let Ok(r) = (unsafe { c.irecv(b.as_mut_ptr(), b.len(), 0) }) else { return };
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
                let (ci, s) = (u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..16].try_into().unwrap()));
                if n != size || ci != i as u64 || s != seq {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                got[i].fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
        accepted += 1;
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
        "RESULT mode=scale conns={conns} size={size} secs={dt:.2} agg_mb_per_s={sum:.1} jain={jain:.4} min_mb_per_s={min:.3} bad_messages={}",
        bad.load(Ordering::Relaxed)
    );
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
