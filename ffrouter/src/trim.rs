//! Gives idle connections' ring pages back to the kernel.
//!
//! Every connection file this router hands out (a same-host pair's, and
//! each connection it forwards to another host) is watched here. Once a
//! second ([`sweep_every`]) a sweep looks at each ring's head and tail in
//! the control page; a ring whose head has not moved for
//! `FF_ROUTER_TRIM_IDLE_MS` (default 2,000 ms) and that is empty is
//! trimmed with [`Layout::trim`]: all its pages but the
//! [`ffcore::ring::TRIM_KEEP`] bytes the next record goes to are punched out of
//! the file (see ffcore's `ring` module, "Trimming", for why that is safe
//! and what a tenant's values can and cannot do). A trimmed ring is not
//! looked at again until its head moves. A ring that comes back within
//! four times its idle time after a trim waits twice as long before the
//! next (up to [`IDLE_MAX`], 64 s): a job that pauses between its steps
//! stops paying a trim and the faults (over RDMA, a registration) that
//! follow at every step. At most [`MAX_TRIMS`] rings are
//! trimmed per sweep, so thousands of connections going idle at once cost
//! a few sweeps, not a burst. The sweep never waits on anything a tenant
//! writes: a ring whose writer is busy (or says so forever) is left for
//! the next sweep.
//!
//! The ring a router writes itself (a forwarded connection's, towards its
//! client) has a writer that takes no part in the shared handshake
//! ([`Layout::tx_private`]); [`Rings::without_own_writer`] keeps it
//! out with the connection's own lock, taken without waiting. A ring
//! registered with an RDMA NIC is deregistered just before it is punched
//! ([`Rings::unpin`]), and registered again by its next big transfer.
//!
//! One thread per router process, started with the first connection; it
//! sleeps while there is none.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ffcore::ring::{Layout, Trim};
use ffcore::shm::SharedMem;

/// Most rings trimmed in one sweep.
pub const MAX_TRIMS: usize = 256;

/// A connection file the router holds, and how to keep out the writer of
/// the ring the router writes itself, if any.
pub trait Rings: Send + Sync {
    fn mem(&self) -> &SharedMem;
    /// The ring (by direction) the router writes with a private `Tx`.
    fn own_ring(&self) -> Option<usize> {
        None
    }
    /// Runs `f` while the router's own writer of [`Rings::own_ring`] is
    /// kept out (its lock taken, without waiting); false, without running
    /// `f`, when that lock is busy now.
    fn without_own_writer(&self, f: &mut dyn FnMut()) -> bool {
        f();
        true
    }
    /// Called with ring `dir` idle, empty and its writer kept out, just
    /// before its pages are punched: a ring registered with an RDMA NIC,
    /// which keeps the pages it was given (punched out, they would stay
    /// the NIC's while the processes fault in new ones), is deregistered
    /// here first ([`crate::link::Link::unpin`]). False: leave it as it is.
    fn unpin(&self, _dir: usize) -> bool {
        true
    }
}

/// A same-host pair: both rings written by clients.
impl Rings for SharedMem {
    fn mem(&self) -> &SharedMem {
        self
    }
}

/// Idle time before a ring is trimmed (0: never).
pub fn idle_before_trim() -> Duration {
    static K: OnceLock<u64> = OnceLock::new();
    Duration::from_millis(*K.get_or_init(|| std::env::var("FF_ROUTER_TRIM_IDLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)))
}

/// How often the sweep runs.
pub fn sweep_every() -> Duration {
    Duration::from_secs(1).min(idle_before_trim().max(Duration::from_millis(10)))
}

/// A ring back in use within this many times its idle time after it was
/// trimmed has its idle time doubled ([`Watch::idle`]).
const BACK_SOON: u32 = 4;
/// The most a ring's idle time grows to: any connection idle this long
/// is trimmed.
pub const IDLE_MAX: Duration = Duration::from_secs(64);

#[derive(Clone, Copy)]
struct Watch {
    head: u64,
    since: Instant,
    /// Trimmed (or found corrupt) at this head: nothing to do until it moves.
    done: bool,
    /// How long this ring must stay idle to be trimmed: the router's idle
    /// time, doubled (up to [`IDLE_MAX`]) each time the ring came back
    /// within [`BACK_SOON`] times it after a trim. A job that pauses
    /// between steps (a training step's compute) would otherwise have its
    /// rings trimmed at every pause, and fault them in again (over RDMA,
    /// register them again) at every step.
    idle: Duration,
    /// When it was last trimmed, if since its head last moved.
    trimmed: Option<Instant>,
}

impl Watch {
    fn new(head: u64, now: Instant, idle: Duration) -> Watch {
        Watch { head, since: now, done: false, idle, trimmed: None }
    }

    /// Its head moved to `head` at `now`.
    fn moved(&mut self, head: u64, now: Instant) {
        let idle = match self.trimmed {
            Some(t) if now.saturating_duration_since(t) < self.idle * BACK_SOON => (self.idle * 2).min(IDLE_MAX.max(self.idle)),
            _ => self.idle,
        };
        *self = Watch::new(head, now, idle);
    }
}

struct Entry {
    rings: Weak<dyn Rings>,
    watch: [Watch; 2],
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    pub trimmed: usize,
    pub bytes: usize,
    /// Idle, empty rings left for a later sweep (writer busy, or the cap).
    pub deferred: usize,
}

/// The watched connection files.
pub struct Trimmer {
    idle: Duration,
    /// Registered since the last sweep (so that registering never waits
    /// behind a sweep).
    new: Mutex<Vec<Weak<dyn Rings>>>,
    woken: Condvar,
    /// The sweeper's own list.
    entries: Mutex<Vec<Entry>>,
}

impl Trimmer {
    pub fn new(idle: Duration) -> Trimmer {
        Trimmer { idle, new: Mutex::default(), woken: Condvar::new(), entries: Mutex::default() }
    }

    /// Watches a connection file from now on, until it is dropped.
    pub fn watch(&self, rings: Weak<dyn Rings>) {
        self.new.lock().unwrap().push(rings);
        self.woken.notify_one();
    }

    /// Looks at every watched ring once; trims those idle and empty.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut entries = self.entries.lock().unwrap();
        for rings in std::mem::take(&mut *self.new.lock().unwrap()) {
            let Some(r) = rings.upgrade() else { continue };
            let lay = Layout::of_own(r.mem());
            let watch = [0, 1].map(|dir| Watch::new(lay.counters(dir).0, now, self.idle));
            entries.push(Entry { rings, watch });
        }
        let mut out = Swept::default();
        entries.retain_mut(|e| {
            let Some(r) = e.rings.upgrade() else { return false };
            out.files += 1;
            let lay = Layout::of_own(r.mem());
            for dir in 0..2 {
                let w = &mut e.watch[dir];
                let (head, tail, _) = lay.counters(dir);
                if head != w.head {
                    w.moved(head, now);
                    continue;
                }
                if w.done || head != tail || now.saturating_duration_since(w.since) < w.idle {
                    continue;
                }
                if out.trimmed >= MAX_TRIMS {
                    out.deferred += 1;
                    continue;
                }
                let res = if r.own_ring() == Some(dir) {
                    let mut res = Ok(Trim::Busy);
                    r.without_own_writer(&mut || res = lay.trim_with(r.mem(), dir, head, true, &mut || r.unpin(dir)));
                    res
                } else {
                    lay.trim_with(r.mem(), dir, head, false, &mut || r.unpin(dir))
                };
                match res {
                    Ok(Trim::Done { punched }) => {
                        w.done = true;
                        w.trimmed = Some(now);
                        out.trimmed += 1;
                        out.bytes += punched;
                    }
                    Ok(Trim::Busy) => out.deferred += 1,
                    Err(e) => {
                        crate::limited!(warn, "trim", "", "cannot trim a connection's ring: {e}");
                        w.done = true;
                    }
                }
            }
            true
        });
        out
    }

    /// Sweeps every [`sweep_every`] while anything is watched.
    fn run(&self) {
        let mut files = 0;
        loop {
            if files == 0 {
                let mut new = self.new.lock().unwrap();
                while new.is_empty() {
                    new = self.woken.wait(new).unwrap();
                }
            }
            std::thread::sleep(sweep_every());
            let s = self.sweep(Instant::now());
            files = s.files;
            if s.trimmed > 0 {
                log::debug!("trimmed {} idle ring(s) of {} connection file(s): {} KiB", s.trimmed, s.files, s.bytes >> 10);
            }
        }
    }
}

/// Watches `rings` with the process's trimmer (started on first use;
/// nothing when `FF_ROUTER_TRIM_IDLE_MS=0`).
pub fn watch(rings: Weak<dyn Rings>) {
    static T: OnceLock<Option<Arc<Trimmer>>> = OnceLock::new();
    let t = T.get_or_init(|| {
        let idle = idle_before_trim();
        if idle.is_zero() {
            return None;
        }
        let t = Arc::new(Trimmer::new(idle));
        let t2 = t.clone();
        match std::thread::Builder::new().name("ring-trim".into()).spawn(move || t2.run()) {
            Ok(_) => Some(t),
            Err(e) => {
                log::warn!("no ring trimming: cannot start its thread: {e}");
                None
            }
        }
    });
    if let Some(t) = t {
        t.watch(rings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffcore::ring::{self, Rx, Tx, REC_FIRST};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};

    const SIZE: usize = 1 << 20;

    fn conn_file() -> Arc<SharedMem> {
        let mem = SharedMem::create("trim-test", ring::file_len(SIZE)).unwrap();
        ring::init(&mem, SIZE);
        Arc::new(mem)
    }

    fn committed(mem: &SharedMem) -> usize {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor we hold, into a local.
        assert_eq!(unsafe { libc::fstat(mem.fd().as_raw_fd(), &mut st) }, 0);
        st.st_blocks as usize * 512
    }

    /// Sends checksummed messages from `tx` to `rx` until `bytes` went
    /// through, every one checked; each time as many as the ring takes,
    /// reading all but the newest, so that the ring never empties (as in a
    /// stream: a ring emptied at every message rewinds and keeps to its
    /// first pages, see ffcore's ring module).
    fn stream(tx: &mut Tx, rx: &mut Rx, bytes: u64, seq: &mut u64) {
        let msg = |seq: u64| -> Vec<u8> { (0..20_000u32).map(|i| (i as u64 * 13 + seq) as u8).collect() };
        let mut take = |seq: u64| {
            let r = rx.peek().unwrap().unwrap();
            let mut b = vec![0u8; r.len];
            unsafe { rx.copy_out(0, b.as_mut_ptr(), r.len) };
            rx.consume(r.len);
            assert_eq!((r.total, b), (seq, msg(seq)));
        };
        let end = tx.produced() + bytes;
        let mut next = *seq;
        while tx.produced() < end {
            while tx.push_record(REC_FIRST, 0, next, &msg(next)).unwrap() {
                next += 1;
            }
            while *seq + 1 < next {
                take(*seq);
                *seq += 1;
            }
        }
        while *seq < next {
            take(*seq);
            *seq += 1;
        }
    }

    #[test]
    fn idle_empty_rings_are_trimmed_busy_ones_and_stuck_writers_are_left() {
        let t = Trimmer::new(Duration::from_secs(2));
        let (a, b, c) = (conn_file(), conn_file(), conn_file());
        for m in [&a, &b, &c] {
            let w: Weak<SharedMem> = Arc::downgrade(m);
            t.watch(w);
        }
        let lays = [&a, &b, &c].map(|m| Layout::of_own(m));
        let mut ends: Vec<(Tx, Rx)> = lays.iter().map(|l| (l.tx(0), l.rx(1))).collect();
        let mut seq = 0;
        for (tx, rx) in ends.iter_mut() {
            stream(tx, rx, 2 * SIZE as u64, &mut seq);
        }
        let t0 = Instant::now();
        assert_eq!(t.sweep(t0).trimmed, 0, "just moved");
        assert_eq!(t.sweep(t0 + Duration::from_secs(1)).trimmed, 0, "not idle long enough");
        // b: a message left unread; c: a writer (hostile, or stuck) that
        // keeps its `writing` word set (control page offset 2048).
        let (tx, _) = &mut ends[1];
        assert!(tx.push_record(REC_FIRST, 0, 1, b"unread").unwrap());
        let writing = unsafe { &*(c.as_ptr().add(2048) as *const AtomicU32) };
        writing.store(1, Ordering::SeqCst);
        let before = [&a, &b, &c].map(|m| committed(m));
        assert!(before.iter().all(|&n| n >= SIZE));
        // b's head moved: it starts its idle time again.
        let s = t.sweep(t0 + Duration::from_secs(3));
        assert_eq!((s.files, s.trimmed), (3, 4), "a's two rings, c's unused one, b's unused one");
        assert!(committed(&a) <= ring::CTRL_LEN + ffcore::ring::TRIM_KEEP + 4096, "a: {} bytes left", committed(&a));
        assert!(committed(&c) >= SIZE, "c's writer is in: not trimmed");
        let s = t.sweep(t0 + Duration::from_secs(10));
        assert_eq!(s.trimmed, 0, "b has data, c's writer never leaves, a is done");
        assert!(s.deferred >= 1);
        assert!(committed(&b) >= SIZE && committed(&c) >= SIZE);
        // Everything still works, intact; a and b trim again once idle.
        for (tx, rx) in ends.iter_mut() {
            let r = rx.peek().unwrap();
            if let Some(r) = r {
                rx.consume(r.len);
            }
            stream(tx, rx, SIZE as u64, &mut seq);
        }
        writing.store(0, Ordering::SeqCst);
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(t.sweep(t1).trimmed, 0, "moved");
        assert_eq!(t.sweep(t1 + Duration::from_secs(3)).trimmed, 3);
        // A dropped file is forgotten.
        drop(ends);
        drop(a);
        assert_eq!(t.sweep(t1 + Duration::from_secs(4)).files, 2);
    }

    /// A ring used again soon after each trim (a job pausing between its
    /// steps) waits twice as long before the next one, each time, up to
    /// IDLE_MAX; one back long after its trim keeps its idle time.
    #[test]
    fn a_ring_back_soon_after_each_trim_waits_longer_before_the_next() {
        let t = Trimmer::new(Duration::from_secs(2));
        let a = conn_file();
        let w: Weak<SharedMem> = Arc::downgrade(&a);
        t.watch(w);
        let lay = Layout::of_own(&a);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        let (mut seq, t0) = (0, Instant::now());
        let s = |at: Instant| t.sweep(at).trimmed;
        assert_eq!(s(t0), 0);
        assert_eq!(s(t0 + Duration::from_secs(3)), 2, "both rings, never used, idle for 3 s");
        let mut now = t0 + Duration::from_millis(3100);
        stream(&mut tx, &mut rx, SIZE as u64, &mut seq);
        assert_eq!(s(now), 0, "back 0.1 s after its trim: 4 s from now on");
        // Trimmed after 4 s, then back only 100 s later: it keeps 4 s.
        assert_eq!((s(now + Duration::from_millis(3500)), s(now + Duration::from_secs(4))), (0, 1));
        now += Duration::from_secs(104);
        stream(&mut tx, &mut rx, SIZE as u64, &mut seq);
        assert_eq!(s(now), 0);
        for expect in [4, 8, 16, 32, 64, 64].map(Duration::from_secs) {
            let start = now;
            assert_eq!(s(start + expect - Duration::from_millis(500)), 0, "not idle {expect:?} yet");
            assert_eq!(s(start + expect), 1, "idle {expect:?}: trimmed");
            assert!(committed(&a) <= ring::CTRL_LEN + 2 * ffcore::ring::TRIM_KEEP + 8192);
            // Back soon after: twice as long next time, up to IDLE_MAX.
            now = start + expect + Duration::from_millis(100);
            stream(&mut tx, &mut rx, SIZE as u64, &mut seq);
            assert_eq!(s(now), 0);
        }
    }

    /// A forwarded connection's ring the router writes itself: kept out by
    /// its lock, never by the shared words a tenant writes.
    struct Own {
        mem: Arc<SharedMem>,
        tx: Mutex<Tx>,
    }

    impl Rings for Own {
        fn mem(&self) -> &SharedMem {
            &self.mem
        }
        fn own_ring(&self) -> Option<usize> {
            Some(0)
        }
        fn without_own_writer(&self, f: &mut dyn FnMut()) -> bool {
            match self.tx.try_lock() {
                Ok(_g) => {
                    f();
                    true
                }
                Err(_) => false,
            }
        }
    }

    #[test]
    fn the_routers_own_ring_is_trimmed_under_its_lock_whatever_the_tenant_writes() {
        let t = Trimmer::new(Duration::ZERO);
        let mem = conn_file();
        let lay = Layout::of_own(&mem);
        let own = Arc::new(Own { mem: mem.clone(), tx: Mutex::new(lay.tx_private(0)) });
        let w: Weak<Own> = Arc::downgrade(&own);
        t.watch(w);
        let mut rx = lay.rx(1);
        let mut seq = 0;
        stream(&mut own.tx.lock().unwrap(), &mut rx, 2 * SIZE as u64, &mut seq);
        // The tenant (reader) sets `trimming` for ring 0 and leaves it.
        let trimming = unsafe { &*(mem.as_ptr().add(2048 + 64) as *const AtomicU32) };
        trimming.store(1, Ordering::SeqCst);
        {
            let _busy = own.tx.lock().unwrap();
            let s = t.sweep(Instant::now());
            assert!(s.deferred >= 1, "the router's writer holds its lock: {s:?}");
            assert!(committed(&mem) >= SIZE);
        }
        let now = Instant::now();
        t.sweep(now);
        assert!(committed(&mem) <= ring::CTRL_LEN + ffcore::ring::TRIM_KEEP + 4096);
        // The router's writer is not stopped by the tenant's word.
        stream(&mut own.tx.lock().unwrap(), &mut rx, SIZE as u64, &mut seq);
    }
}
