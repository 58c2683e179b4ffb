//! ffbench: benchmark and test peer for FreeFlow connections.
//!
//! Every mode has two ends: `ffbench serve MODE` listens and prints
//! `HANDLE <hex>` on stdout; `ffbench connect MODE --handle <hex>` connects.
//! The handle travels out of band (the harness copies the line), exactly as
//! NCCL or UCX would carry it. Results are printed as `RESULT key=value ...`.

use std::io::Write;
use std::time::{Duration, Instant};

mod scale;
mod soak;

use clap::{Parser, Subcommand, ValueEnum};
use ffcore::{Conn, Context, Handle, Req};

#[derive(Parser)]
#[command(name = "ffbench", about = "FreeFlow benchmark and test peer")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Listen, print the handle, accept one connection, run MODE.
    Serve(Opts),
    /// Connect to --handle and run MODE.
    Connect(Opts),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// 8-byte (--size) ping-pong; reports the half round trip.
    Pingpong,
    /// The connector streams --size messages, --window in flight.
    Stream,
    /// Checksummed exchange of many sizes, both directions, --window in flight.
    Check,
    /// Connect, then sit idle for --secs (for router CPU measurements).
    Idle,
    /// The connector streams forever (until killed); for fault tests.
    Flood,
    /// Edge cases: sends posted before receives, zero-byte messages,
    /// truncation reported as an error, tags.
    Semantics,
    /// Soak: --conns connections, random sizes, checksums, for --secs; the
    /// server accepts any number of (re)connecting senders.
    Soak,
    /// Scale: --conns connections; connect latency, idle, then all stream
    /// --size messages at once (aggregate and Jain's fairness), with
    /// --probes connects meanwhile (bench/scale.sh).
    Scale,
}

#[derive(clap::Args)]
struct Opts {
    mode: Mode,
    #[arg(long)]
    handle: Option<String>,
    #[arg(long, default_value_t = 8)]
    size: usize,
    #[arg(long, default_value_t = 10000)]
    iters: usize,
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Largest message in check mode.
    #[arg(long, default_value_t = 64 << 20)]
    max_size: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connections in soak mode.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Scale mode: seconds idle after connecting.
    #[arg(long, default_value_t = 12.0)]
    idle_secs: f64,
    /// Scale mode: connects timed while all connections stream.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Scale mode: 0 = one thread per connection (blocking sends and
    /// receives); K > 0 = K driver threads per side, each progressing its
    /// share of the connections with nonblocking requests and sleeping on
    /// all of them at once when none can move (ffcore::conn::wait_any).
    #[arg(long, default_value_t = 0)]
    drivers: usize,
    /// Scale mode with --drivers: messages outstanding per connection on
    /// each side (sends posted, receives posted), each with a buffer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    depth: u64,
    /// Distinct buffers per side in stream mode (1, like ucx_perftest).
    #[arg(long, default_value_t = 1)]
    buffers: usize,
    /// Do not register the buffers (stream, check): every byte then goes
    /// through the connection's rings.
    #[arg(long)]
    no_register: bool,
    /// Check mode: once half the messages went both ways, sit idle this
    /// long before the rest (so that the router trims the idle rings, and
    /// the rest goes through rings trimmed and, over RDMA, registered
    /// again).
    #[arg(long, default_value_t = 0.0)]
    rest: f64,
}

/// A buffer of `len` bytes starting `skew` bytes past a page boundary,
/// registered unless --no-register (shadow memory: on one host the receiver
/// copies straight from a send buffer; from another host the router writes
/// straight into a receive buffer that starts on a page). Deregistered
/// before freed.
struct Buf {
    // First: dropped (deregistered) before the memory goes.
    _mr: Option<ffcore::ShadowMr>,
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(ctx: &Context, len: usize, skew: usize, register: bool, fill: impl FnOnce(&mut [u8])) -> ffcore::Result<Buf> {
        const PAGE: usize = 4096;
        let mut raw = vec![0u8; len + 2 * PAGE];
        let off = (PAGE - raw.as_ptr() as usize % PAGE) % PAGE + skew % PAGE;
        fill(&mut raw[off..off + len]);
        // SAFETY: our own heap memory, which nothing else maps or pins.
        let mr = if !register || len == 0 { None } else { Some(unsafe { ctx.register_shadow(raw.as_ptr().add(off), len)? }) };
        Ok(Buf { _mr: mr, raw, off, len })
    }

    fn ptr(&self) -> *const u8 {
        self.raw[self.off..].as_ptr()
    }

    fn mut_ptr(&mut self) -> *mut u8 {
        self.raw[self.off..].as_mut_ptr()
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    /// Writable only while no request uses the buffer (the caller's care).
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

const T: Option<Duration> = Some(Duration::from_secs(60));

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli.role) {
        eprintln!("ffbench: error: {e}");
        std::process::exit(2);
    }
}

fn run(role: Role) -> ffcore::Result<()> {
    scale::raise_nofile();
    let ctx = Context::new()?;
    // Soak and scale manage their own (many) connections.
    match &role {
        Role::Serve(o) if o.mode == Mode::Scale => {
            let l = ctx.listen()?;
            println!("HANDLE {}", l.handle().to_hex());
            std::io::stdout().flush()?;
            return scale::recv(&ctx, l, o.conns, o.size, o.secs, o.drivers, o.depth as usize, !o.no_register);
        }
        Role::Connect(o) if o.mode == Mode::Scale => {
            let h = Handle::from_hex(o.handle.as_deref().unwrap_or(""))?;
            return scale::send(&ctx, &h, o.conns, o.size, o.idle_secs, o.probes, o.drivers, o.depth as usize, !o.no_register);
        }
        Role::Serve(o) if o.mode == Mode::Soak => {
            let l = ctx.listen()?;
            println!("HANDLE {}", l.handle().to_hex());
            std::io::stdout().flush()?;
            return soak::recv(&l, o.secs);
        }
        Role::Connect(o) if o.mode == Mode::Soak => {
            let h = Handle::from_hex(o.handle.as_deref().unwrap_or(""))?;
            return soak::send(&ctx, &h, o.conns, o.secs, o.seed);
        }
        _ => {}
    }
    let (opts, mut conn, server) = match role {
        Role::Serve(o) => {
            let l = ctx.listen()?;
            println!("HANDLE {}", l.handle().to_hex());
            std::io::stdout().flush()?;
            let c = l.accept_timeout(Duration::from_secs(60))?;
            (o, c, true)
        }
        Role::Connect(o) => {
            let h = Handle::from_hex(o.handle.as_deref().unwrap_or(""))?;
            let c = loop {
                if let Some(c) = ctx.connect(&h)? {
                    break c;
                }
                std::thread::sleep(Duration::from_micros(100));
            };
            (o, c, false)
        }
    };
    match opts.mode {
        Mode::Pingpong => pingpong(&mut conn, &opts, server),
        Mode::Stream => stream(&ctx, &mut conn, &opts, server),
        Mode::Check => check(&ctx, &mut conn, &opts, server),
        Mode::Idle => idle(&mut conn, &opts),
        Mode::Flood => flood(&mut conn, &opts, server),
        Mode::Semantics => semantics(&mut conn, server),
        Mode::Soak | Mode::Scale => unreachable!("handled above"),
    }
}

fn pingpong(c: &mut Conn, o: &Opts, server: bool) -> ffcore::Result<()> {
    let mut buf = vec![0u8; o.size];
    let warm = (o.iters / 10).max(10);
    let mut lat = Vec::with_capacity(o.iters);
    for i in 0..warm + o.iters {
        let t = Instant::now();
        if server {
            c.recv(&mut buf, 0, T)?;
            c.send(&buf, 0, T)?;
        } else {
            buf[0] = i as u8;
            c.send(&buf, 0, T)?;
            c.recv(&mut buf, 0, T)?;
            if buf[0] != i as u8 {
                return Err(ffcore::Error::InvalidArgument("ping-pong reply mismatch".into()));
            }
        }
        if i >= warm {
            lat.push(t.elapsed().as_nanos() as f64 / 2000.0);
        }
    }
    if !server {
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        let mean = lat.iter().sum::<f64>() / lat.len() as f64;
        println!("RESULT mode=pingpong size={} iters={} half_rtt_us_p50={:.3} half_rtt_us_mean={:.3} half_rtt_us_p99={:.3}", o.size, o.iters, p(0.5), mean, p(0.99));
    }
    Ok(())
}

/// Posts `total` operations with at most `window` in flight.
fn windowed(c: &mut Conn, window: usize, total: usize, mut post: impl FnMut(&mut Conn, usize) -> ffcore::Result<Req>) -> ffcore::Result<()> {
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..total {
        if inflight.len() == window {
            c.wait(inflight.pop_front().unwrap(), T)?;
        }
        inflight.push_back(post(c, i)?);
    }
    for r in inflight {
        c.wait(r, T)?;
    }
    Ok(())
}

fn stream(ctx: &Context, c: &mut Conn, o: &Opts, server: bool) -> ffcore::Result<()> {
    let slots = o.buffers.clamp(1, o.window.max(1));
    let mut bufs: Vec<Buf> = (0..slots).map(|i| Buf::new(ctx, o.size, 0, !o.no_register, |b| b.fill(i as u8))).collect::<ffcore::Result<_>>()?;
    let mut ack = [0u8; 1];
    let warm = (o.iters / 10).max(2);
    for (phase, n) in [(0, warm), (1, o.iters)] {
        let start = Instant::now();
        let cpu0 = busy_cpu_secs();
        if server {
            windowed(c, o.window, n, |c, i| {
                let b = &mut bufs[i % slots];
                // SAFETY: the buffers live until the function returns, after
                // every request completed. Receives may share a buffer (as in
                // ucx_perftest); the bytes are not inspected.
                unsafe { c.irecv(b.mut_ptr(), b.len, 0) }
            })?;
            c.send(&ack, 0, T)?;
        } else {
            windowed(c, o.window, n, |c, i| {
                let b = &bufs[i % slots];
                // SAFETY: as above; send buffers are never written meanwhile.
                unsafe { c.isend(b.ptr(), b.len, 0) }
            })?;
            c.recv(&mut ack, 0, T)?;
            let secs = start.elapsed().as_secs_f64();
            if phase == 1 {
                let mbs = (o.size * n) as f64 / secs / 1e6;
                let rate = n as f64 / secs / 1e6;
                let cpu = busy_cpu_secs().zip(cpu0).map(|(b, a)| b - a).unwrap_or(f64::NAN);
                let per_gb = cpu / ((o.size * n) as f64 / 1e9);
                println!(
                    "RESULT mode=stream size={} iters={n} window={} mb_per_s={mbs:.1} mmsg_per_s={rate:.3} cpu_s={cpu:.3} cpu_s_per_gb={per_gb:.4}",
                    o.size, o.window
                );
            }
        }
    }
    Ok(())
}

/// CPU seconds spent so far by the benchmark: with FF_BENCH_CPU_FD (an
/// inherited descriptor of the `cpuacct.usage` file of a cgroup the
/// benchmark script put itself, and so every router and client of both
/// emulated hosts, in: a descriptor, because a container's /sys does not
/// show the host's cgroups), that group's usage, kernel work done for it
/// included; without it, the whole machine's busy time (/proc/stat, which
/// no namespace hides). The difference over a transfer is what it cost.
fn busy_cpu_secs() -> Option<f64> {
    if let Some(fd) = std::env::var("FF_BENCH_CPU_FD").ok().and_then(|v| v.parse::<i32>().ok()) {
        let mut b = [0u8; 32];
        // SAFETY: pread into our own buffer; a bad descriptor just fails.
        let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), b.len(), 0) };
        let ns: u64 = std::str::from_utf8(b.get(..usize::try_from(n).ok()?)?).ok()?.trim().parse().ok()?;
        return Some(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / hz)
}

/// Deterministic message contents: xorshift64* from (seed, index).
fn fill(buf: &mut [u8], seed: u64, idx: u64) {
    let mut x = seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (buf.len() as u64) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for ch in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ch.copy_from_slice(&x.to_le_bytes());
    }
    for b in chunks.into_remainder() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// The size of message `i` in check mode: every interesting edge up to `max`.
fn check_size(i: usize, max: usize) -> usize {
    const SIZES: [usize; 16] =
        [0, 1, 7, 8, 63, 64, 65, 4095, 4096, 4097, 65536, 100_003, 1 << 20, (4 << 20) + 1, 16 << 20, 64 << 20];
    let s = SIZES[i % SIZES.len()];
    if s > max { i % 97 } else { s }
}

fn check(ctx: &Context, c: &mut Conn, o: &Opts, server: bool) -> ffcore::Result<()> {
    // Each side sends o.iters messages and receives o.iters, interleaved,
    // with o.window of each in flight. Receive buffers get 13 bytes of slack
    // to exercise "message smaller than the buffer".
    let n = o.iters;
    let (send_seed, recv_seed) = if server { (o.seed + 1, o.seed) } else { (o.seed, o.seed + 1) };
    let mut sbufs: Vec<Option<Buf>> = (0..n).map(|_| None).collect();
    let mut rbufs: Vec<Option<Buf>> = (0..n).map(|_| None).collect();
    let mut sq = std::collections::VecDeque::new();
    let mut rq = std::collections::VecDeque::new();
    let (mut next_s, mut next_r, mut bytes, mut checked) = (0usize, 0usize, 0u64, 0usize);
    // With --rest: the first half, then the rest after the pause.
    let mut upto = if o.rest > 0.0 { n / 2 } else { n };
    while checked < n || !sq.is_empty() {
        if upto < n && checked == upto && sq.is_empty() {
            println!("RESTING {}s after {checked} messages each way", o.rest);
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs_f64(o.rest));
            upto = n;
        }
        while next_s < upto && sq.len() < o.window {
            // Every third buffer starts on a page, the others anywhere.
            let skew = [0, 8, 1000][next_s % 3];
            let b = Buf::new(ctx, check_size(next_s, o.max_size), skew, !o.no_register, |b| fill(b, send_seed, next_s as u64))?;
            // SAFETY: the buffer is kept in sbufs until the send completes.
            let r = unsafe { c.isend(b.ptr(), b.len, 7)? };
            sbufs[next_s] = Some(b);
            sq.push_back((r, next_s));
            next_s += 1;
        }
        while next_r < upto && rq.len() < o.window {
            // Page-aligned receives (every other one) may be written
            // straight into by the router, from another host.
            let skew = [0, 8][next_r % 2];
            let mut b = Buf::new(ctx, check_size(next_r, o.max_size) + 13, skew, !o.no_register, |_| {})?;
            // SAFETY: the buffer is kept in rbufs until the receive completes.
            let r = unsafe { c.irecv(b.mut_ptr(), b.len, 7)? };
            rbufs[next_r] = Some(b);
            rq.push_back((r, next_r));
            next_r += 1;
        }
        // Complete whichever head is done; wait on receives when both pend.
        let mut any = false;
        if let Some(&(r, i)) = sq.front() {
            if c.test(r)?.is_some() {
                sq.pop_front();
                sbufs[i] = None;
                any = true;
            }
        }
        if let Some(&(r, i)) = rq.front() {
            let got = if any { c.test(r)? } else { Some(c.wait(r, T)?) };
            if let Some(got) = got {
                rq.pop_front();
                let b = rbufs[i].take().unwrap();
                let want = check_size(i, o.max_size);
                if got != want {
                    return Err(ffcore::Error::InvalidArgument(format!("message {i}: got {got} bytes, want {want}")));
                }
                let mut exp = vec![0u8; want];
                fill(&mut exp, recv_seed, i as u64);
                let b = b.bytes();
                if crc32fast::hash(&b[..got]) != crc32fast::hash(&exp) || b[..got] != exp[..] {
                    return Err(ffcore::Error::InvalidArgument(format!("message {i} ({got} bytes): checksum mismatch")));
                }
                bytes += got as u64;
                checked += 1;
            }
        } else if let Some(&(r, i)) = sq.front() {
            c.wait(r, T)?;
            sq.pop_front();
            sbufs[i] = None;
        }
    }
    println!("RESULT mode=check messages={checked} bytes={bytes} ok=1");
    Ok(())
}

fn idle(c: &mut Conn, o: &Opts) -> ffcore::Result<()> {
    let mut b = [0u8; 1];
    let r = unsafe { c.irecv(b.as_mut_ptr(), 1, 0)? };
    match c.wait(r, Some(Duration::from_secs_f64(o.secs))) {
        Err(ffcore::Error::Timeout(_)) => {
            println!("RESULT mode=idle secs={}", o.secs);
            // Leave the receive outstanding: dropping the connection cancels it.
            std::process::exit(0);
        }
        Err(e) => Err(e),
        Ok(_) => Err(ffcore::Error::InvalidArgument("unexpected message while idle".into())),
    }
}

fn flood(c: &mut Conn, o: &Opts, server: bool) -> ffcore::Result<()> {
    let mut b = vec![0u8; o.size.max(1)];
    println!("FLOODING");
    std::io::stdout().flush()?;
    loop {
        if server {
            c.recv(&mut b, 0, T)?;
        } else {
            c.send(&b, 0, T)?;
        }
    }
}

fn fail(msg: String) -> ffcore::Error {
    ffcore::Error::InvalidArgument(msg)
}

fn semantics(c: &mut Conn, server: bool) -> ffcore::Result<()> {
    let msgs: Vec<Vec<u8>> = (0..40).map(|i| { let mut b = vec![0u8; i * 37]; fill(&mut b, 9, i as u64); b }).collect();
    if !server {
        // 40 sends (including a zero-byte one) posted before the peer posts a
        // single receive; they complete as their bytes enter the ring.
        let reqs: Vec<Req> = msgs.iter().map(|m| unsafe { c.isend(m.as_ptr(), m.len(), 3) }).collect::<ffcore::Result<_>>()?;
        for r in reqs {
            c.wait(r, T)?;
        }
        c.send(&[0u8; 100], 3, T)?; // will not fit: the peer posts 50 bytes
        c.send(b"after", 3, T)?;
        let mut done = [0u8; 1];
        c.recv(&mut done, 3, T)?;
        println!("RESULT mode=semantics side=connect ok=1");
        return Ok(());
    }
    std::thread::sleep(Duration::from_millis(300)); // the sends are already posted
    for (i, m) in msgs.iter().enumerate() {
        let mut b = vec![0u8; m.len() + 64];
        let n = c.recv(&mut b, 3, T)?;
        if n != m.len() || b[..n] != m[..] {
            return Err(fail(format!("message {i}: {n} bytes, content mismatch or wrong size")));
        }
    }
    let mut small = [0u8; 50];
    match c.recv(&mut small, 3, T) {
        Err(ffcore::Error::Truncated { msg: 100, buf: 50 }) => {}
        other => return Err(fail(format!("expected a truncation error, got {other:?}"))),
    }
    let mut b = [0u8; 16];
    let n = c.recv(&mut b, 3, T)?;
    if &b[..n] != b"after" {
        return Err(fail("the message after a truncated one was lost".into()));
    }
    c.send(&[1], 3, T)?;
    println!("RESULT mode=semantics side=serve ok=1 messages=42 truncation=reported");
    Ok(())
}
