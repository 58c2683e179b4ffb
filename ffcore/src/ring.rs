//! The shared file behind one connection: two single-producer,
//! single-consumer byte rings (one per direction) plus wake-up words.
//!
//! ```text
//! offset 0      control page (4 KiB)
//!   0    magic, ring size, flags          written once by the router
//!   64   side 0: wake, waiting, closed, attached, cpu, caps, shadow_done
//!   128  side 1: the same                       (one cache line each side)
//!   256  ring 0 head    320 ring 0 tail   (ring 0 carries side 0 -> side 1)
//!   384  ring 1 head    448 ring 1 tail   (ring 1 carries side 1 -> side 0)
//!   512  messages sent by side 0       576  messages sent by side 1
//!        (written by each sender for the router's counters only)
//!   640  ring 0 padding of rewinds    704  ring 1's (the same; see
//!        "Rewinding")
//!   2048 ring 0 writing   2112 ring 0 trimming   (the trim handshake,
//!   2176 ring 1 writing   2240 ring 1 trimming    see "Trimming" below)
//! 4096          ring 0 data (ring_size bytes)
//! 4096 + size   ring 1 data
//! ```
//!
//! A ring holds records, each 64-byte aligned: a 32-byte header then the
//! payload. Records never wrap; a PAD record fills the tail of the ring.
//! Positions are free-running u64 byte counters.
//!
//! # Rewinding
//!
//! A client's writer ([`Layout::tx`]) that finds its ring empty when a
//! small record would start a page it has not written this lap, at least
//! [`REWIND_AT`] bytes into the ring, pads to the end and writes at offset
//! 0 instead: traffic that never fills the ring (a ping-pong, a small
//! collective) keeps reusing its first pages, committed and in cache,
//! where it used to walk the whole ring, taking a page fault for each page
//! of a fresh ring's first lap (and again after every trim): a 4 KiB
//! ping-pong between two routers took twice as long during a 4 MiB ring's
//! first lap (bench/results/rewind-2026-12-04). Readers only see one more
//! PAD record. Streams keep their ring partly full and never rewind. The
//! router's own writers ([`Layout::tx_private`]) never rewind: the credit
//! between routers counts the ring bytes they use.
//!
//! Trust: the other side of a ring is another tenant process (or the router),
//! so every value read from shared memory — head, tail, record headers — is
//! validated here before use, and a bad one is reported as
//! [`Error::Corrupt`]. Payload bytes are only ever copied.
//!
//! # Trimming
//!
//! A ring that streamed once has all its pages committed (4 MiB per ring
//! by default), and they would stay so for the life of the connection.
//! [`Layout::trim`] gives an idle, empty ring's pages back to the kernel:
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)` on the connection file over the
//! ring's data, except [`TRIM_KEEP`] bytes from the page where the next
//! record goes (a small message after a pause faults nothing in). Punching
//! takes the pages out of every process's mapping at once; the next write
//! faults a zeroed page in. That is only correct while nobody reads or
//! writes those pages:
//! - the reader reads only `[tail, head)`: trimming requires `head ==
//!   tail` in shared memory, i.e. the reader released everything (a
//!   reader that [`Rx::hold`]s bytes has not released them, so its ring is
//!   not empty). So whatever reads ring bytes (a peer's RDMA READ of
//!   gathered bytes included) must be done before the tail is released
//!   past them;
//! - the writer owns the free space, so it is kept out with a handshake in
//!   the control page (Dekker's, with sequentially consistent accesses): a
//!   [`Tx`] sets its ring's `writing` word before it writes into free space
//!   and clears it after publishing the head; the trimmer sets `trimming`,
//!   then checks that `writing` is clear, that the ring is empty and that
//!   the head is still the one it saw idle, punches, and clears `trimming`.
//!   Either the writer sees `trimming` (it backs off: clears its word,
//!   waits a bounded while for the trim to end, and otherwise reports "no
//!   room now", like a full ring), or the trimmer sees `writing` or a moved
//!   head (it gives up and tries again later). A reservation
//!   ([`Tx::reserve`]) keeps `writing` set until its [`Tx::commit`].
//! - a writer that is the trimmer's own process (the router's, for a
//!   connection it forwards to another host) is made with
//!   [`Layout::tx_private`]: it takes no part in the shared handshake, and
//!   the trimmer keeps it out with its own lock instead, so that a tenant
//!   writing `trimming` cannot stall or fail the router's writes.
//!
//! Hostile values: both words are in memory the tenants write. A tenant
//! that keeps `writing` set only keeps its own ring committed; one that
//! sets `trimming` only makes its own (or its peer's, whose data it could
//! equally refuse to read) writer back off; one that lies about head or
//! tail to get a ring trimmed under bytes it reads only reads zeroes of
//! its own connection (checked like any record). The trimmer never waits
//! on either word. Cost on the hot path: one `xchg` and one load of a line
//! that stays in the writer's cache per push (bench/results/trim-2026-12-02).

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::mr::RemoteKey;
use crate::futex;
use crate::shm::SharedMem;

pub const CTRL_LEN: usize = 4096;
/// Control-page offset of ring 0's trim handshake (`writing`, then
/// `trimming` a cache line later; ring 1's 128 bytes further).
const GATE_OFF: usize = 2048;
/// Bytes of a ring a trim keeps committed, from the page the next record
/// goes to.
pub const TRIM_KEEP: usize = 32 << 10;
/// A client's writer goes back to the start of an empty ring once this far
/// into it (see "Rewinding"); records bigger than this never cause it.
pub const REWIND_AT: usize = 64 << 10;
/// The page size rewinding reckons with.
const PAGE: usize = 4096;
/// How long a writer that finds a trim under way waits for it to end
/// before it reports "no room now" (a trim punches a few MiB: well under
/// this, unless the trimmer is descheduled).
const TRIM_WAIT: Duration = Duration::from_millis(2);
const MAGIC: u64 = u64::from_le_bytes(*b"FFRING01");
pub const ALIGN: usize = 64;
pub const REC_HDR: usize = 32;

/// The smallest ring a router gives a connection when it shrinks rings to
/// keep a tenant within its ring budget (`--ring-budget`,
/// `--peer-ring-budget`); a `--ring-size` or `--peer-ring-size` smaller
/// than this bounds those rings instead. A transport that sizes its whole
/// records by one connection (UCX's segments, learnt from a connection to
/// itself) relies on every other connection of the router taking records
/// of [`whole_max`]`(MIN_SCALED_RING)` bytes: 256 KiB less the header,
/// above UCX's default 128 KiB segment.
pub const MIN_SCALED_RING: usize = 1 << 20;

/// The smallest [`Tx::set_window`] (a ring smaller than this is its own
/// window).
pub const MIN_WINDOW: usize = 64 << 10;

/// The largest record a ring of `ring_size` bytes takes whole (a quarter
/// of the ring, less the record header).
pub const fn whole_max(ring_size: usize) -> usize {
    ring_size / 4 - REC_HDR
}

/// Record kinds.
pub const REC_FIRST: u32 = 1;
pub const REC_CONT: u32 = 2;
pub const REC_PAD: u32 = 3;
/// A part of a message that stays in the sender's shadow memory: the
/// payload names it ([`crate::conn`]), the receiver copies it from there.
/// Only to a reader that announced [`CAP_SHADOW`]: a client on this host,
/// or the router forwarding the connection to another host (which sends
/// the bytes from the region onto the wire).
pub const REC_SHADOW: u32 = 4;

/// A receive a client posted in its shadow memory (client → router, on a
/// forwarded connection): the router may write message number `idx` of
/// the connection straight into it ([`PostRef`]; the record's tag is the
/// receive's).
pub const REC_POST: u32 = 5;
/// Message `idx` was written straight into the receive posted for it
/// (router → client; tag and total in the header, [`Placed`] the payload).
pub const REC_PLACED: u32 = 6;

/// Side capability: this side reads [`REC_SHADOW`] records.
pub const CAP_SHADOW: u32 = 1;
/// Side capability (a router's): this side takes [`REC_POST`] records.
pub const CAP_PLACE: u32 = 2;

/// What a [`REC_POST`] record carries: `cap` bytes at the owner's `addr`
/// in the region `key` names, for message `idx`; `gen`: how many
/// withdrawals (`Side::unpost_req`) the client had asked for when it
/// posted (untrusted: checked by the router).
pub struct PostRef {
    pub key: RemoteKey,
    pub addr: u64,
    pub cap: u64,
    pub idx: u64,
    pub gen: u64,
}

impl PostRef {
    pub const LEN: usize = RemoteKey::LEN + 32;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.key.write((&mut b[..RemoteKey::LEN]).try_into().unwrap());
        for (i, v) in [self.addr, self.cap, self.idx, self.gen].into_iter().enumerate() {
            b[RemoteKey::LEN + 8 * i..RemoteKey::LEN + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> PostRef {
        let u = |i: usize| u64::from_le_bytes(b[RemoteKey::LEN + 8 * i..RemoteKey::LEN + 8 * i + 8].try_into().unwrap());
        PostRef { key: RemoteKey::read(b[..RemoteKey::LEN].try_into().unwrap()), addr: u(0), cap: u(1), idx: u(2), gen: u(3) }
    }
}

/// What a [`REC_PLACED`] record carries: the post it filled.
pub struct Placed {
    pub idx: u64,
    pub gen: u64,
}

impl Placed {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.idx.to_le_bytes());
        b[8..].copy_from_slice(&self.gen.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Placed {
        Placed { idx: u64::from_le_bytes(b[..8].try_into().unwrap()), gen: u64::from_le_bytes(b[8..].try_into().unwrap()) }
    }
}

/// What a [`REC_SHADOW`] record carries: `n` bytes at the owner's `addr`
/// in the region `key` names (untrusted: checked by whoever reads it).
pub struct ShadowRef {
    pub key: RemoteKey,
    pub addr: u64,
    pub n: u64,
}

impl ShadowRef {
    pub const LEN: usize = RemoteKey::LEN + 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.key.write((&mut b[..RemoteKey::LEN]).try_into().unwrap());
        b[RemoteKey::LEN..RemoteKey::LEN + 8].copy_from_slice(&self.addr.to_le_bytes());
        b[RemoteKey::LEN + 8..].copy_from_slice(&self.n.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> ShadowRef {
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        ShadowRef { key: RemoteKey::read(b[..RemoteKey::LEN].try_into().unwrap()), addr: u(RemoteKey::LEN), n: u(RemoteKey::LEN + 8) }
    }
}

/// Bytes of shared file for rings of `ring_size` bytes each.
pub fn file_len(ring_size: usize) -> usize {
    CTRL_LEN + 2 * ring_size
}

/// Checks a ring size: a power of two between 4 KiB and 1 GiB.
pub fn valid_ring_size(size: usize) -> bool {
    size.is_power_of_two() && (4096..=(1 << 30)).contains(&size)
}

/// Writes the control page of a freshly created (zeroed) connection file.
pub fn init(mem: &SharedMem, ring_size: usize) {
    assert!(valid_ring_size(ring_size) && mem.len() == file_len(ring_size));
    // SAFETY: the file is at least CTRL_LEN bytes, offsets 0 and 8 are
    // 8-aligned (mmap is page aligned) and nobody else maps it yet.
    unsafe {
        (mem.as_ptr() as *mut u64).write(MAGIC);
        (mem.as_ptr().add(8) as *mut u64).write(ring_size as u64);
    }
}

/// Control-page flag: a router plays the other side and forwards it to
/// another host. The peer is then many microseconds away and the router's
/// threads need CPU time to move the bytes, so a client that polls should
/// now and then yield its core (see `Conn::forwarded`).
pub const FLAG_FORWARDED: u32 = 1;

/// Sets control-page flags of a freshly initialised connection file (before
/// any client maps it).
pub fn set_flags(mem: &SharedMem, flags: u32) {
    assert!(mem.len() >= CTRL_LEN);
    // SAFETY: offset 16 lies in the control page, 4-aligned; nobody else
    // maps the file yet.
    unsafe { (mem.as_ptr().add(16) as *mut u32).write(flags) };
}

/// Views over one mapped connection file. Holds raw pointers into `mem`;
/// the owner keeps `mem` alive as long as the view.
#[derive(Clone, Copy)]
pub struct Layout {
    base: *mut u8,
    pub ring_size: usize,
}

// SAFETY: the pointers refer to a shared mapping that is only accessed
// through atomics and raw copies; moving the view between threads is fine.
unsafe impl Send for Layout {}

impl Layout {
    /// Checks the control page against the expected ring size.
    pub fn new(mem: &SharedMem, ring_size: usize) -> Result<Layout> {
        if !valid_ring_size(ring_size) || mem.len() != file_len(ring_size) {
            return Err(Error::protocol(format!("bad connection file: {} bytes for ring {ring_size}", mem.len())));
        }
        let l = Layout { base: mem.as_ptr(), ring_size };
        let magic = l.word64(0).load(Ordering::Relaxed);
        let size = l.word64(8).load(Ordering::Relaxed);
        if magic != MAGIC || size != ring_size as u64 {
            return Err(Error::Corrupt("connection control page".into()));
        }
        Ok(l)
    }

    /// The layout of a connection file this process created and
    /// initialised itself (the router's): the ring size comes from the
    /// file's sealed length, not from the control page, which the clients
    /// may have overwritten since. Panics on a file [`init`] never made.
    pub fn of_own(mem: &SharedMem) -> Layout {
        let ring_size = mem.len().saturating_sub(CTRL_LEN) / 2;
        assert!(valid_ring_size(ring_size) && mem.len() == file_len(ring_size), "not a connection file");
        Layout { base: mem.as_ptr(), ring_size }
    }

    /// The control-page flags ([`FLAG_FORWARDED`]). Written by the router
    /// before the file is shared, but the page is writable by the peer
    /// too: a hint, never trusted for safety.
    pub fn flags(&self) -> u32 {
        self.word32(16).load(Ordering::Relaxed)
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: off < CTRL_LEN and 8-aligned; AtomicU64 accepts any bits and
        // is designed for concurrent access from other threads/processes.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as for word64, 4-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    pub fn side(&self, side: usize) -> Side<'_> {
        let off = 64 + 64 * (side & 1);
        Side {
            wake: self.word32(off),
            waiting: self.word32(off + 4),
            closed: self.word32(off + 8),
            attached: self.word32(off + 12),
            cpu: self.word32(off + 16),
            caps: self.word32(off + 20),
            shadow_done: self.word64(off + 24),
            unpost_req: self.word64(off + 32),
            unposted: self.word64(off + 40),
        }
    }

    /// Marks `side` closed and wakes both sides: the other one sleeps on
    /// its own word ([`Side::close`] alone wakes only `side`'s).
    pub fn close(&self, side: usize) {
        self.side(side).close();
        self.side(1 - (side & 1)).force_wake();
    }

    /// Where ring `dir`'s data lies in the file (byte offsets).
    pub fn ring_span(&self, dir: usize) -> std::ops::Range<usize> {
        let start = CTRL_LEN + (dir & 1) * self.ring_size;
        start..start + self.ring_size
    }

    /// Ring `dir` is written by side `dir`.
    fn ring(&self, dir: usize) -> (&AtomicU64, &AtomicU64, *mut u8) {
        let off = 256 + 128 * (dir & 1);
        // SAFETY: data area lies inside the mapping (checked in `new`).
        let data = unsafe { self.base.add(self.ring_span(dir).start) };
        (self.word64(off), self.word64(off + 64), data)
    }

    /// Counters of ring `dir` for metrics: (head, tail, messages). The
    /// values come from untrusted clients and are only ever displayed.
    pub fn counters(&self, dir: usize) -> (u64, u64, u64) {
        let (head, tail, _) = self.ring(dir);
        (head.load(Ordering::Relaxed), tail.load(Ordering::Relaxed), self.msgs(dir).load(Ordering::Relaxed))
    }

    /// Ring bytes that ring `dir`'s writer skipped to rewind (see
    /// "Rewinding"), as it reports them: for display only (sent bytes are
    /// the head less these).
    pub fn rewound(&self, dir: usize) -> u64 {
        self.rewound_word(dir).load(Ordering::Relaxed)
    }

    fn rewound_word(&self, dir: usize) -> &AtomicU64 {
        self.word64(640 + 64 * (dir & 1))
    }

    /// Messages side `dir` has sent (it alone writes this word).
    pub fn msgs(&self, dir: usize) -> &AtomicU64 {
        self.word64(512 + 64 * (dir & 1))
    }

    pub fn tx(&self, side: usize) -> Tx {
        let (head, _tail, _) = self.ring(side);
        Tx { lay: *self, dir: side, head: head.load(Ordering::Relaxed), tail: 0, gated: true, open: false, rewinds: true, window: self.ring_size }
    }

    /// A producer that takes no part in the shared trim handshake: whoever
    /// trims its ring must keep it out some other way (the router's own
    /// writer, under a lock the router's trimmer takes; see "Trimming").
    pub fn tx_private(&self, side: usize) -> Tx {
        Tx { gated: false, rewinds: false, ..self.tx(side) }
    }

    /// Ring `dir`'s trim handshake words: (`writing`, `trimming`).
    fn gate(&self, dir: usize) -> (&AtomicU32, &AtomicU32) {
        let off = GATE_OFF + 128 * (dir & 1);
        (self.word32(off), self.word32(off + 64))
    }

    /// Gives ring `dir`'s data pages back to the kernel, all but
    /// [`TRIM_KEEP`] bytes from the page its next record goes to, if the
    /// ring is empty and its head is still `idle_head` (what the caller saw
    /// when it decided the ring was idle). `mem` is the file this layout
    /// views. With `writer_excluded` the caller keeps the ring's writer (a
    /// [`Layout::tx_private`] one) out itself for the whole call; otherwise
    /// the shared handshake does (see "Trimming"). Never waits.
    pub fn trim(&self, mem: &SharedMem, dir: usize, idle_head: u64, writer_excluded: bool) -> Result<Trim> {
        self.trim_with(mem, dir, idle_head, writer_excluded, &mut || true)
    }

    /// [`Layout::trim`], calling `unpin` once the ring is found idle and
    /// empty with its writer kept out, just before punching: it lets go of
    /// whatever else holds the ring's pages (an RDMA NIC's registration),
    /// or returns false to leave the ring as it is ([`Trim::Busy`]).
    pub fn trim_with(&self, mem: &SharedMem, dir: usize, idle_head: u64, writer_excluded: bool, unpin: &mut dyn FnMut() -> bool) -> Result<Trim> {
        assert!(mem.as_ptr() == self.base && mem.len() == file_len(self.ring_size), "trim with another file");
        let dir = dir & 1;
        let (writing, trimming) = self.gate(dir);
        if !writer_excluded {
            trimming.store(1, Ordering::SeqCst);
            if writing.load(Ordering::SeqCst) != 0 {
                trimming.store(0, Ordering::Release);
                return Ok(Trim::Busy);
            }
        }
        let (head, tail, _) = self.ring(dir);
        let (h, t) = (head.load(Ordering::SeqCst), tail.load(Ordering::SeqCst));
        let res = if h != t || h != idle_head || !unpin() {
            Ok(Trim::Busy)
        } else {
            self.punch(mem, dir, h)
        };
        if !writer_excluded {
            trimming.store(0, Ordering::Release);
            // A writer that backed off may sleep waiting for room.
            self.side(dir).notify();
        }
        res
    }

    /// Punches ring `dir`'s data but the pages from `head` on that
    /// [`TRIM_KEEP`] covers.
    fn punch(&self, mem: &SharedMem, dir: usize, head: u64) -> Result<Trim> {
        let (size, page) = (self.ring_size, crate::shadow::page_size());
        let keep_from = ((head as usize) & (size - 1)) / page * page;
        let keep_to = keep_from + TRIM_KEEP.min(size);
        // Ring offsets to punch: outside [keep_from, keep_to) (mod size).
        let ranges = if keep_to <= size { [(keep_to, size), (0, keep_from)] } else { [(keep_to - size, keep_from), (0, 0)] };
        let base = self.ring_span(dir).start;
        let mut punched = 0;
        for (a, b) in ranges {
            // Whole pages of the file only (pages may be larger than 4 KiB).
            let (a, b) = ((base + a).div_ceil(page) * page, (base + b) / page * page);
            if b <= a {
                continue;
            }
            // SAFETY: fallocate on a descriptor we hold, inside the file.
            let r = unsafe {
                libc::fallocate(
                    mem.fd().as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    a as libc::off_t,
                    (b - a) as libc::off_t,
                )
            };
            if r != 0 {
                return Err(Error::Io(std::io::Error::last_os_error()));
            }
            punched += b - a;
        }
        Ok(Trim::Done { punched })
    }

    pub fn rx(&self, side: usize) -> Rx {
        let dir = 1 - (side & 1);
        let (_, tail, _) = self.ring(dir);
        Rx { lay: *self, dir, tail: tail.load(Ordering::Relaxed), head: 0, holding: false }
    }
}

/// What [`Layout::trim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// The ring's pages but the kept ones went back to the kernel
    /// (`punched` bytes of file range; pages never touched count too).
    Done { punched: usize },
    /// Not now: its writer is writing, it holds data, or it moved.
    Busy,
}

/// One side's wake-up words.
pub struct Side<'a> {
    /// Bumped on every event for this side; the futex word.
    pub wake: &'a AtomicU32,
    /// Non-zero while this side sleeps (or is about to).
    pub waiting: &'a AtomicU32,
    /// Non-zero once this side closed or died (set by it or the router).
    pub closed: &'a AtomicU32,
    /// Non-zero once this side holds its liveness lock ([`crate::liveness`]).
    pub attached: &'a AtomicU32,
    /// The CPU this side last polled from, plus one (0: not known). Written
    /// by another process: only ever a hint for how to spin.
    pub cpu: &'a AtomicU32,
    /// What this side reads ([`CAP_SHADOW`]); 0 for older peers and the
    /// router.
    pub caps: &'a AtomicU32,
    /// [`REC_SHADOW`] records this side has copied out (the sender's
    /// buffers they name are free again up to there).
    pub shadow_done: &'a AtomicU64,
    /// A client's: how many times it asked the router to drop every
    /// [`REC_POST`] it made before (only ever grows).
    pub unpost_req: &'a AtomicU64,
    /// A router's: the client's `unpost_req` it has carried out (it will
    /// not write into receives posted before that any more).
    pub unposted: &'a AtomicU64,
}

impl Side<'_> {
    /// Wakes this side if it sleeps. Call after publishing a change.
    ///
    /// (Taking a sleeper's announcement back on its first wake-up, to save
    /// later notifiers the system call, was tried for issue 17 and
    /// reverted: several threads announce on one side (a client's own wait
    /// and its wake helper), and UCP atomics across hosts then hung in
    /// about 1 run of 3.)
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) != 0 {
            self.wake.fetch_add(1, Ordering::SeqCst);
            futex::wake_all(self.wake);
        }
    }

    /// Wakes this side unconditionally (used for close).
    pub fn force_wake(&self) {
        self.wake.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(self.wake);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) != 0
    }

    /// Marks the side closed and wakes it (its peer sleeps on its own
    /// word: [`Layout::close`] wakes both).
    pub fn close(&self) {
        self.closed.store(1, Ordering::Release);
        self.force_wake();
    }

    /// Announces an intent to sleep; returns the word value to sleep on.
    /// The caller must re-check its condition before calling [`Side::sleep`].
    pub fn prepare_sleep(&self) -> u32 {
        self.waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.wake.load(Ordering::SeqCst)
    }

    /// Records that this side polls from `cpu` (see [`current_cpu`]).
    pub fn set_cpu(&self, cpu: u32) {
        if self.cpu.load(Ordering::Relaxed) != cpu.wrapping_add(1) {
            self.cpu.store(cpu.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// This side stopped polling (it sleeps, or hands over).
    pub fn clear_cpu(&self) {
        self.cpu.store(0, Ordering::Relaxed);
    }

    /// Did this side last poll from `cpu`? Then spinning while we wait for
    /// it only keeps it off its core: yield instead.
    pub fn polls_on(&self, cpu: u32) -> bool {
        cpu != u32::MAX && self.cpu.load(Ordering::Relaxed) == cpu + 1
    }

    /// The wake word now: to sleep without announcing it (no `notify`
    /// will wake the caller, only a [`Side::force_wake`] from whoever it
    /// handed its work to). Re-check the hand-over after reading this.
    pub fn seen(&self) -> u32 {
        self.wake.load(Ordering::SeqCst)
    }

    pub fn sleep(&self, seen: u32, timeout: Duration) {
        futex::wait(self.wake, seen, timeout);
        self.waiting.store(0, Ordering::Relaxed);
    }

    pub fn cancel_sleep(&self) {
        self.waiting.store(0, Ordering::Relaxed);
    }
}

/// The CPU the calling thread runs on now (u32::MAX if unknown, which
/// [`Side::set_cpu`] records as "not known"). Cheap (vDSO).
pub fn current_cpu() -> u32 {
    // SAFETY: no arguments; returns -1 on failure.
    let c = unsafe { libc::sched_getcpu() };
    u32::try_from(c).unwrap_or(u32::MAX)
}

/// A record header, as read from the ring and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: u32,
    pub tag: u32,
    /// Total message length (FIRST records only).
    pub total: u64,
    /// Payload bytes in this record.
    pub len: usize,
}

fn rec_len(payload: usize) -> usize {
    (REC_HDR + payload).div_ceil(ALIGN) * ALIGN
}

/// Producer end of one ring.
pub struct Tx {
    lay: Layout,
    dir: usize,
    /// Our own copy of head: we never trust the shared one.
    head: u64,
    /// Last tail seen.
    tail: u64,
    /// Takes part in the shared trim handshake ([`Layout::tx_private`]:
    /// not).
    gated: bool,
    /// Our `writing` word is set (a write, or a reservation, under way).
    open: bool,
    /// Goes back to the start of an empty ring (see "Rewinding").
    rewinds: bool,
    /// Most bytes [`Tx::push`] leaves unread in the ring (the ring's size
    /// unless [`Tx::set_window`] said less).
    window: usize,
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Tx {
    /// Announces a write into free space (the trim handshake, see
    /// "Trimming"); false if a trim of this ring is under way and did not
    /// end within [`TRIM_WAIT`]: the caller then reports "no room now".
    #[inline]
    fn enter(&mut self) -> bool {
        if self.open || !self.gated {
            return true;
        }
        let (writing, trimming) = self.lay.gate(self.dir);
        writing.store(1, Ordering::SeqCst);
        if trimming.load(Ordering::SeqCst) == 0 {
            self.open = true;
            return true;
        }
        self.enter_slow()
    }

    #[cold]
    fn enter_slow(&mut self) -> bool {
        let (writing, trimming) = self.lay.gate(self.dir);
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            // Out of the trimmer's way while it punches.
            writing.store(0, Ordering::SeqCst);
            while trimming.load(Ordering::Relaxed) != 0 {
                if start.elapsed() > TRIM_WAIT {
                    return false;
                }
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            writing.store(1, Ordering::SeqCst);
            if trimming.load(Ordering::SeqCst) == 0 {
                self.open = true;
                return true;
            }
        }
    }

    /// Ends what [`Tx::enter`] announced (after publishing the head).
    #[inline]
    fn leave(&mut self) {
        if self.open {
            self.open = false;
            self.lay.gate(self.dir).0.store(0, Ordering::Release);
        }
    }

    fn refresh_tail(&mut self) -> Result<()> {
        let (_, tail, _) = self.lay.ring(self.dir);
        let t = tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(t);
        if used > self.lay.ring_size as u64
            || t.wrapping_sub(self.tail) > self.lay.ring_size as u64
            || t % ALIGN as u64 != 0
        {
            return Err(Error::Corrupt(format!("ring tail {t} vs head {}", self.head)));
        }
        self.tail = t;
        Ok(())
    }

    /// Rewinding (see the module docs), before a record of `need` ring
    /// bytes: pads to the end of the ring when it is empty, the record
    /// would start a page not written this lap, and we are [`REWIND_AT`]
    /// or more into it. Afterwards `[0, old offset)` is free: at least
    /// [`REWIND_AT`] bytes, so the record fits.
    fn rewind_if_empty(&mut self, need: usize) -> Result<()> {
        let size = self.lay.ring_size;
        let off = (self.head as usize) & (size - 1);
        if !self.rewinds || off < REWIND_AT || need > REWIND_AT || (!off.is_multiple_of(PAGE) && off % PAGE + need <= PAGE) {
            return Ok(());
        }
        // The padding counts as unread until the consumer skips it: within
        // a window it must leave room for the record.
        if size - off + need > self.window {
            return Ok(());
        }
        if self.tail != self.head {
            self.refresh_tail()?;
            if self.tail != self.head {
                return Ok(());
            }
        }
        let (head_w, _, data) = self.lay.ring(self.dir);
        // SAFETY: off is 64-aligned and below size, so a header fits before
        // the end; the ring is empty, so [off, size) is free space.
        unsafe { self.write_hdr(data.add(off), REC_PAD, 0, 0, size - off - REC_HDR) };
        self.head += (size - off) as u64;
        head_w.store(self.head, Ordering::Release);
        self.lay.rewound_word(self.dir).fetch_add((size - off) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes one record with up to `max` bytes from `src` (which must be
    /// valid for `max` reads). Returns the payload bytes written, or None if
    /// the ring has no room now. Zero-length records are allowed.
    ///
    /// # Safety
    /// `src` must be valid for reads of `max` bytes.
    pub unsafe fn push(&mut self, kind: u32, tag: u32, total: u64, src: *const u8, max: usize) -> Result<Option<usize>> {
        if !self.enter() {
            return Ok(None);
        }
        let r = self.push_entered(kind, tag, total, src, max);
        self.leave();
        r
    }

    /// [`Tx::push`] once [`Tx::enter`]ed.
    unsafe fn push_entered(&mut self, kind: u32, tag: u32, total: u64, src: *const u8, max: usize) -> Result<Option<usize>> {
        self.rewind_if_empty(rec_len(max))?;
        let size = self.lay.ring_size;
        let mut free = self.window_free();
        if free < rec_len(max.min(ALIGN)) {
            self.refresh_tail()?;
            free = self.window_free();
        }
        let (head_w, _, data) = self.lay.ring(self.dir);
        let off = (self.head as usize) & (size - 1);
        let to_end = size - off;
        // Not even a header and a cache line of payload fits before the end:
        // pad to the end and start over at offset 0.
        if to_end < rec_len(max.min(ALIGN)) && to_end < size {
            if free < to_end {
                return Ok(None);
            }
            self.write_hdr(data.add(off), REC_PAD, 0, 0, to_end - REC_HDR);
            self.head += to_end as u64;
            head_w.store(self.head, Ordering::Release);
            return self.push_entered(kind, tag, total, src, max);
        }
        let room = free.min(to_end);
        if room < rec_len(max.min(ALIGN)) {
            return Ok(None);
        }
        let n = max.min(room - REC_HDR);
        let p = data.add(off);
        std::ptr::copy_nonoverlapping(src, p.add(REC_HDR), n);
        self.write_hdr(p, kind, tag, total, n);
        self.head += rec_len(n) as u64;
        head_w.store(self.head, Ordering::Release);
        Ok(Some(n))
    }

    /// Writes one whole-message record (kind FIRST, total = length) whose
    /// payload `fill` produces in place: it gets a pointer to `max` writable
    /// bytes in the ring and returns how many it wrote (at most `max`).
    /// Returns the payload length, or None (without calling `fill`) if room
    /// for `max` bytes is not free now. `max` must be at most a quarter of
    /// the ring.
    pub fn push_whole_with(&mut self, tag: u32, max: usize, fill: impl FnOnce(*mut u8) -> usize) -> Result<Option<usize>> {
        self.push_record_with(REC_FIRST, tag, None, max, fill)
    }

    /// Writes one record of `kind` whose payload is `bytes`, never split;
    /// false if the ring has no room for it now.
    pub fn push_record(&mut self, kind: u32, tag: u32, total: u64, bytes: &[u8]) -> Result<bool> {
        let n = bytes.len();
        // SAFETY: fill writes n bytes into the n the ring reserved.
        let r = self.push_record_with(kind, tag, Some(total), n, |p| unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
            n
        })?;
        Ok(r.is_some())
    }

    /// [`Tx::push_whole_with`] for any kind; `total` None: the payload length.
    fn push_record_with(&mut self, kind: u32, tag: u32, total: Option<u64>, max: usize, fill: impl FnOnce(*mut u8) -> usize) -> Result<Option<usize>> {
        if max > self.lay.ring_size / 4 {
            return Err(Error::InvalidArgument(format!("{max}-byte record does not fit a quarter of the {}-byte ring", self.lay.ring_size)));
        }
        if !self.enter() {
            return Ok(None);
        }
        let r = self.push_record_entered(kind, tag, total, max, fill);
        self.leave();
        r
    }

    fn push_record_entered(&mut self, kind: u32, tag: u32, total: Option<u64>, max: usize, fill: impl FnOnce(*mut u8) -> usize) -> Result<Option<usize>> {
        let size = self.lay.ring_size;
        if max > size / 4 {
            return Err(Error::InvalidArgument(format!("{max}-byte record does not fit a quarter of the {size}-byte ring")));
        }
        let need = rec_len(max);
        self.rewind_if_empty(need)?;
        let mut off = (self.head as usize) & (size - 1);
        let to_end = size - off;
        // A record never wraps: if it does not fit before the end, a PAD
        // record fills the rest and it starts at offset 0.
        let required = if to_end < need { to_end + need } else { need };
        let mut free = size - self.head.wrapping_sub(self.tail) as usize;
        if free < required {
            self.refresh_tail()?;
            free = size - self.head.wrapping_sub(self.tail) as usize;
            if free < required {
                return Ok(None);
            }
        }
        let (head_w, _, data) = self.lay.ring(self.dir);
        if to_end < need {
            // SAFETY: off is 64-aligned and to_end >= ALIGN bytes remain.
            unsafe { self.write_hdr(data.add(off), REC_PAD, 0, 0, to_end - REC_HDR) };
            self.head += to_end as u64;
            head_w.store(self.head, Ordering::Release);
            off = 0;
        }
        // SAFETY: [off, off + need) lies inside the ring and is free space
        // that only we (the producer) write until we publish the head.
        let p = unsafe { data.add(off) };
        let n = fill(unsafe { p.add(REC_HDR) }).min(max);
        unsafe { self.write_hdr(p, kind, tag, total.unwrap_or(n as u64), n) };
        self.head += rec_len(n) as u64;
        head_w.store(self.head, Ordering::Release);
        Ok(Some(n))
    }

    unsafe fn write_hdr(&self, p: *mut u8, kind: u32, tag: u32, total: u64, len: usize) {
        let h = p as *mut u64;
        h.write_volatile(kind as u64 | (tag as u64) << 32);
        h.add(1).write_volatile(total);
        h.add(2).write_volatile(len as u64);
        h.add(3).write_volatile(0);
    }

    /// Bytes free in the ring now (records need their header and
    /// alignment, and never wrap, so less than this may fit in one).
    pub fn free(&mut self) -> Result<usize> {
        self.refresh_tail()?;
        Ok(self.lay.ring_size - self.head.wrapping_sub(self.tail) as usize)
    }

    /// Bytes [`Tx::push`] may write now: [`Tx::free`] within the window.
    pub fn stream_free(&mut self) -> Result<usize> {
        self.refresh_tail()?;
        Ok(self.window_free())
    }

    /// What the window leaves free by the tail last seen.
    fn window_free(&self) -> usize {
        self.window.saturating_sub(self.head.wrapping_sub(self.tail) as usize)
    }

    /// Limits what [`Tx::push`] leaves unread in the ring to `bytes`
    /// (from [`MIN_WINDOW`] to the ring's size; the ring's size undoes
    /// it): a writer with a bigger ring than its neighbours' then moves
    /// no more per turn than they do (see `crate::conn::share`). Whole
    /// records ([`Tx::push_record`], [`Tx::push_whole_with`]) and
    /// reservations still use the whole ring.
    pub fn set_window(&mut self, bytes: usize) {
        self.window = bytes.clamp(MIN_WINDOW.min(self.lay.ring_size), self.lay.ring_size);
    }

    /// True when the consumer has taken everything we wrote.
    pub fn is_drained(&mut self) -> Result<bool> {
        self.refresh_tail()?;
        Ok(self.tail == self.head)
    }
}

/// Consumer end of one ring.
pub struct Rx {
    lay: Layout,
    dir: usize,
    /// Our own copy of tail.
    tail: u64,
    /// Last head seen.
    head: u64,
    /// While set, consumed bytes go back to the producer only on
    /// [`Rx::release`] (see [`Rx::hold`]).
    holding: bool,
}

impl Rx {
    /// Reads and validates the next record header, skipping PAD records.
    pub fn peek(&mut self) -> Result<Option<Record>> {
        loop {
            if self.head == self.tail {
                let (head, _, _) = self.lay.ring(self.dir);
                let h = head.load(Ordering::Acquire);
                let used = h.wrapping_sub(self.tail);
                if used > self.lay.ring_size as u64 || h.wrapping_sub(self.head) > self.lay.ring_size as u64 {
                    return Err(Error::Corrupt(format!("ring head {h} vs tail {}", self.tail)));
                }
                self.head = h;
                if h == self.tail {
                    return Ok(None);
                }
            }
            let avail = (self.head - self.tail) as usize;
            if avail < ALIGN || !avail.is_multiple_of(ALIGN) {
                return Err(Error::Corrupt(format!("{avail} bytes published, not whole records")));
            }
            let (Record { kind, tag, total, len }, span) = self.record_at(self.tail, avail as u64)?;
            match kind {
                REC_PAD => {
                    self.consume_span(span);
                    continue;
                }
                REC_FIRST | REC_CONT | REC_SHADOW | REC_POST | REC_PLACED => return Ok(Some(Record { kind, tag, total, len })),
                k => return Err(Error::Corrupt(format!("unknown record kind {k}"))),
            }
        }
    }

    /// The record header at ring position `pos`, with `avail` bytes
    /// published from there on, and its span; checked to lie in what is
    /// published and not to wrap.
    fn record_at(&self, pos: u64, avail: u64) -> Result<(Record, usize)> {
        let size = self.lay.ring_size;
        let off = (pos as usize) & (size - 1);
        // SAFETY: off is 64-aligned, so the header lies in the ring.
        let (w0, total, len) = unsafe {
            let h = self.lay.ring(self.dir).2.add(off) as *const u64;
            (h.read_volatile(), h.add(1).read_volatile(), h.add(2).read_volatile())
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let span = if len <= size { rec_len(len) } else { usize::MAX };
        if span as u64 > avail || span > size - off {
            return Err(Error::Corrupt(format!("record of {len} bytes overruns the ring")));
        }
        Ok((Record { kind: w0 as u32, tag: (w0 >> 32) as u32, total, len }, span))
    }

    /// Looks ahead, from the current record through everything published,
    /// for a record of `kind` whose payload is `payload`: its `total`.
    /// Moves nothing. For records a trusted producer (the router) wrote
    /// behind the one being looked at; still checked like [`Rx::peek`].
    pub fn find_ahead(&mut self, kind: u32, payload: &[u8]) -> Result<Option<u64>> {
        let size = self.lay.ring_size;
        let (head, _, data) = self.lay.ring(self.dir);
        let h = head.load(Ordering::Acquire);
        if h.wrapping_sub(self.tail) > size as u64 {
            return Err(Error::Corrupt(format!("ring head {h} vs tail {}", self.tail)));
        }
        let mut pos = self.tail;
        while pos != h {
            let (r, span) = self.record_at(pos, h.wrapping_sub(pos))?;
            if r.kind == kind && r.len == payload.len() {
                let off = (pos as usize) & (size - 1);
                // SAFETY: the payload's len bytes lie in the ring (checked).
                let got = unsafe { std::slice::from_raw_parts(data.add(off + REC_HDR), r.len) };
                if got == payload {
                    return Ok(Some(r.total));
                }
            }
            pos = pos.wrapping_add(span as u64);
        }
        Ok(None)
    }

    /// Copies `n` payload bytes from offset `at` of the current record.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `n` bytes; `at + n` must not exceed
    /// the record length returned by [`Rx::peek`].
    pub unsafe fn copy_out(&self, at: usize, dst: *mut u8, n: usize) {
        let off = (self.tail as usize) & (self.lay.ring_size - 1);
        let src = self.lay.ring(self.dir).2.add(off + REC_HDR + at);
        std::ptr::copy_nonoverlapping(src, dst, n);
    }

    /// The payload of the record [`Rx::peek`] returned last, in place (valid
    /// for that record's `len` bytes until [`Rx::consume`]). The producer is
    /// untrusted: treat the bytes as input, not as stable memory.
    pub fn payload(&self) -> *const u8 {
        let off = (self.tail as usize) & (self.lay.ring_size - 1);
        // SAFETY: off + REC_HDR is inside the ring (off is 64-aligned).
        unsafe { self.lay.ring(self.dir).2.add(off + REC_HDR) }
    }

    /// Releases the current record (of `len` payload bytes) to the producer.
    pub fn consume(&mut self, len: usize) {
        self.consume_span(rec_len(len));
    }

    fn consume_span(&mut self, span: usize) {
        self.tail += span as u64;
        if !self.holding {
            let (_, tail, _) = self.lay.ring(self.dir);
            tail.store(self.tail, Ordering::Release);
        }
    }

    /// From now on [`Rx::consume`] only moves our reading position: the
    /// bytes stay ours (their payload pointers stay valid) until
    /// [`Rx::release`]. Lets a consumer look at several records before it
    /// is done with the first (the router sends many with one system call).
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Gives everything consumed so far back to the producer; ends
    /// [`Rx::hold`]. True if that was anything (since the last release).
    pub fn release(&mut self) -> bool {
        self.holding = false;
        let (_, tail, _) = self.lay.ring(self.dir);
        tail.swap(self.tail, Ordering::AcqRel) != self.tail
    }

    /// Our reading position (what [`Rx::consume`] moved so far).
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Gives the bytes before `pos` (a [`Rx::position`] taken earlier) back
    /// to the producer, and keeps holding the rest. True if that was
    /// anything (since the last release).
    pub fn release_to(&mut self, pos: u64) -> bool {
        debug_assert!(self.holding && pos.wrapping_sub(self.tail) as i64 <= 0);
        let (_, tail, _) = self.lay.ring(self.dir);
        tail.swap(pos, Ordering::AcqRel) != pos
    }

    /// True if the producer has published bytes we have not consumed.
    pub fn has_data(&self) -> bool {
        let (head, _, _) = self.lay.ring(self.dir);
        head.load(Ordering::Acquire) != self.tail
    }
}

/// Zero-copy production, for the router's forwarding of connections to
/// other hosts: the payload is written straight into the ring (e.g. read
/// from a socket) between [`Tx::reserve`] and [`Tx::commit`].
impl Tx {
    /// Reserves room for the payload of one record: returns a pointer to
    /// `n` contiguous writable bytes, `n <= max`, or None when the ring has
    /// no room now. With `whole`, `n == max` or None (the record must not be
    /// split: `max` must then be at most a quarter of the ring); otherwise
    /// `n` may be smaller than `max` (at the end of the ring or when the ring
    /// is nearly full), like [`Tx::push`]. May publish a PAD record to move
    /// to the start of the ring. Nothing else may be pushed before the
    /// matching [`Tx::commit`]; reserving again just returns the same room.
    /// Until then the ring is not trimmed (see "Trimming").
    pub fn reserve(&mut self, max: usize, whole: bool) -> Result<Option<(*mut u8, usize)>> {
        if whole && max > self.lay.ring_size / 4 {
            return Err(Error::InvalidArgument(format!("{max}-byte record does not fit a quarter of the {}-byte ring", self.lay.ring_size)));
        }
        if !self.enter() {
            return Ok(None);
        }
        let r = self.reserve_entered(max, whole);
        if !matches!(r, Ok(Some(_))) {
            self.leave();
        }
        r
    }

    /// [`Tx::reserve`] once [`Tx::enter`]ed (the room stays announced
    /// until [`Tx::commit`]).
    fn reserve_entered(&mut self, max: usize, whole: bool) -> Result<Option<(*mut u8, usize)>> {
        let size = self.lay.ring_size;
        let want = if whole { rec_len(max) } else { rec_len(max.min(ALIGN)) };
        let mut free = size - self.head.wrapping_sub(self.tail) as usize;
        if free < rec_len(max) {
            self.refresh_tail()?;
            free = size - self.head.wrapping_sub(self.tail) as usize;
        }
        let (head_w, _, data) = self.lay.ring(self.dir);
        let mut off = (self.head as usize) & (size - 1);
        let mut to_end = size - off;
        if to_end < want && to_end < size {
            if free < to_end + want {
                return Ok(None);
            }
            // SAFETY: off is 64-aligned, so at least one whole header fits
            // before the end; the space is free (checked above).
            unsafe { self.write_hdr(data.add(off), REC_PAD, 0, 0, to_end - REC_HDR) };
            self.head += to_end as u64;
            head_w.store(self.head, Ordering::Release);
            free -= to_end;
            off = 0;
            to_end = size;
        }
        let room = free.min(to_end);
        if room < want {
            return Ok(None);
        }
        let n = max.min(room - REC_HDR);
        // SAFETY: [off, off + REC_HDR + n) lies inside the ring and is free.
        Ok(Some((unsafe { data.add(off + REC_HDR) }, n)))
    }

    /// Publishes the record whose payload (`n` bytes, at most what
    /// [`Tx::reserve`] returned) was written into the reserved room.
    pub fn commit(&mut self, kind: u32, tag: u32, total: u64, n: usize) -> Result<()> {
        let size = self.lay.ring_size;
        let off = (self.head as usize) & (size - 1);
        let free = size - self.head.wrapping_sub(self.tail) as usize;
        if rec_len(n) > free.min(size - off) || !matches!(kind, REC_FIRST | REC_CONT) || (self.gated && !self.open) {
            return Err(Error::InvalidArgument(format!("commit of a {n}-byte record (kind {kind}) that was not reserved")));
        }
        let (head_w, _, data) = self.lay.ring(self.dir);
        // SAFETY: the record's span is inside the ring and free (checked).
        unsafe { self.write_hdr(data.add(off), kind, tag, total, n) };
        self.head += rec_len(n) as u64;
        head_w.store(self.head, Ordering::Release);
        self.leave();
        Ok(())
    }

    /// Has the consumer left something unread? (A hint: a corrupt tail
    /// counts as no, the next real use reports it.)
    pub fn unread(&mut self) -> bool {
        matches!(self.consumed(), Ok(t) if t != self.head)
    }

    /// Total bytes (records and padding) produced so far: our own count,
    /// never read back from shared memory.
    pub fn produced(&self) -> u64 {
        self.head
    }

    /// Total bytes the consumer has released, read from shared memory and
    /// checked (it never goes back and never passes what was produced).
    pub fn consumed(&mut self) -> Result<u64> {
        self.refresh_tail()?;
        Ok(self.tail)
    }
}

/// Ring bytes a record with `payload` bytes occupies (header, payload,
/// alignment).
pub fn record_span(payload: usize) -> usize {
    rec_len(payload)
}

/// A fresh connection file with rings of `size` bytes, and its layout.
#[cfg(test)]
fn test_ring(size: usize) -> (SharedMem, Layout) {
    let mem = SharedMem::create("ring-test", file_len(size)).unwrap();
    init(&mem, size);
    let lay = Layout::new(&mem, size).unwrap();
    (mem, lay)
}

#[cfg(test)]
mod rewind_tests {
    use super::{test_ring as ring, *};

    /// Reads one whole message (FIRST + CONTs) or None.
    fn take(rx: &mut Rx) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let rec = rx.peek().unwrap()?;
            let mut b = vec![0u8; rec.len];
            unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
            got.extend_from_slice(&b);
            rx.consume(rec.len);
            if got.len() as u64 >= rec.total {
                return Some(got);
            }
        }
    }

    fn msg(i: usize, n: usize) -> Vec<u8> {
        (0..n).map(|j| (i * 131 + j) as u8).collect()
    }

    /// A window keeps what is unread within it, a message bigger than the
    /// window still goes (in pieces), and the writer still rewinds only
    /// where the padding leaves the record room in the window.
    #[test]
    fn a_window_bounds_what_is_left_unread() {
        let size = 1 << 20;
        let window = 128 << 10;
        let (_m, lay) = ring(size);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        tx.set_window(window);
        assert_eq!(tx.stream_free().unwrap(), window);
        // A 300 KiB message through a 128 KiB window, read as it goes.
        let m = msg(1, 300 << 10);
        let (mut sent, mut got) = (0, Vec::new());
        while got.len() < m.len() {
            if sent < m.len() {
                let n = unsafe { tx.push(if sent == 0 { REC_FIRST } else { REC_CONT }, 1, m.len() as u64, m.as_ptr().add(sent), m.len() - sent) }.unwrap().unwrap_or(0);
                sent += n;
            }
            let unread = tx.produced() - rx.position();
            assert!(unread <= window as u64, "{unread} bytes unread, window {window}");
            while let Some(rec) = rx.peek().unwrap() {
                let mut b = vec![0u8; rec.len];
                unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
                got.extend_from_slice(&b);
                rx.consume(rec.len);
            }
        }
        assert_eq!(got, m);
        // Filled to the window, a push finds no room although the ring has.
        let big = msg(2, 200 << 10);
        let mut n = 0;
        while let Some(k) = unsafe { tx.push(if n == 0 { REC_FIRST } else { REC_CONT }, 2, big.len() as u64, big.as_ptr().add(n), big.len() - n) }.unwrap() {
            n += k;
        }
        let unread = (tx.produced() - rx.position()) as usize;
        assert!(n < big.len() && unread <= window && unread + rec_len(ALIGN) > window, "{n} bytes pushed, {unread} unread, window {window}");
        assert!(tx.free().unwrap() > size / 2, "the ring itself is not full");
        // Whole records still use the ring.
        assert!(tx.push_record(REC_FIRST, 3, 8, b"whole!!!").unwrap());
        // Many small messages, each read at once: the writer goes round
        // the ring (rewinding where the window lets it) and every message
        // arrives whole.
        let _ = take(&mut rx);
        let _ = take(&mut rx);
        for i in 0..3000 {
            let m = msg(i, [100usize, 5000, 60_000][i % 3]);
            let mut n = 0;
            while n < m.len() {
                let k = unsafe { tx.push(if n == 0 { REC_FIRST } else { REC_CONT }, 7, m.len() as u64, m.as_ptr().add(n), m.len() - n) }.unwrap();
                n += k.unwrap_or_else(|| panic!("message {i}: no room in an empty window at {n}"));
            }
            assert_eq!(take(&mut rx).unwrap(), m, "message {i}");
        }
        assert!(lay.rewound(0) > 0, "the writer rewound");
        tx.set_window(usize::MAX);
        assert_eq!(tx.stream_free().unwrap(), size, "a window of the whole ring undoes it");
    }

    #[test]
    fn a_ping_pong_keeps_to_the_first_pages_of_a_big_ring() {
        let size = 1 << 20;
        let (_m, lay) = ring(size);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        for (i, n) in (0..2000).map(|i| (i, [8usize, 4096, 1000, 20_000][i % 4])) {
            let m = msg(i, n);
            // By push_record for small ones (a whole record), by push else.
            if n <= 4096 {
                assert!(tx.push_record(REC_FIRST, 7, n as u64, &m).unwrap(), "message {i}");
            } else {
                assert_eq!(unsafe { tx.push(REC_FIRST, 7, n as u64, m.as_ptr(), n) }.unwrap(), Some(n), "message {i}");
            }
            let off = (tx.produced() as usize) & (size - 1);
            assert!(off <= REWIND_AT + PAGE + record_span(20_000), "message {i}: written up to {off}, past the first pages");
            assert_eq!(take(&mut rx).unwrap(), m, "message {i}");
        }
        let rewound = lay.rewound(0);
        assert!(tx.produced() > size as u64 && rewound > 0, "went round by rewinding");
        let payload: u64 = (0..2000).map(|i| record_span([8usize, 4096, 1000, 20_000][i % 4]) as u64).sum();
        assert_eq!(tx.produced() - rewound, payload, "the head less the rewinds' padding is what the records took");
    }

    #[test]
    fn a_ring_with_data_in_it_big_records_and_the_routers_writers_never_rewind() {
        let size = 256 << 10;
        let (_m, lay) = ring(size);
        // A reader that lags: the ring is never empty, the writer goes on.
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        let mut sent = Vec::new();
        for i in 0..40 {
            let m = msg(i, 3000);
            if !tx.push_record(REC_FIRST, 1, 3000, &m).unwrap() {
                break;
            }
            sent.push(m);
        }
        assert!(tx.produced() as usize > REWIND_AT + PAGE);
        assert_eq!(lay.rewound(0), 0, "never while the ring holds data");
        for m in &sent {
            assert_eq!(&take(&mut rx).unwrap(), m);
        }
        // Empty now, past REWIND_AT, but a record bigger than REWIND_AT.
        let big = msg(99, REWIND_AT);
        let at = tx.produced();
        assert_eq!(unsafe { tx.push(REC_FIRST, 1, big.len() as u64, big.as_ptr(), big.len()) }.unwrap(), Some(big.len()));
        assert_eq!((lay.rewound(0), tx.produced() - at), (0, record_span(big.len()) as u64), "a big record goes on from the head");
        assert_eq!(take(&mut rx).unwrap(), big);
        // The router's own writer, empty ring, small records past REWIND_AT.
        let (_m2, lay2) = ring(size);
        let (mut tx2, mut rx2) = (lay2.tx_private(0), lay2.rx(1));
        for i in 0..200 {
            let m = msg(i, 2000);
            assert!(tx2.push_record(REC_FIRST, 1, 2000, &m).unwrap());
            assert_eq!(take(&mut rx2).unwrap(), m);
        }
        assert!(tx2.produced() as usize > size, "went round the whole ring");
        assert_eq!(lay2.rewound(0), 0, "the router's writers never rewind");
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::{test_ring as ring, *};

    fn put(tx: &mut Tx, kind: u32, data: &[u8], whole: bool) -> Option<usize> {
        put_total(tx, kind, data, data.len() as u64, whole)
    }

    fn put_total(tx: &mut Tx, kind: u32, data: &[u8], total: u64, whole: bool) -> Option<usize> {
        let (p, n) = tx.reserve(data.len(), whole).unwrap()?;
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, n) };
        tx.commit(kind, 9, total, n).unwrap();
        Some(n)
    }

    #[test]
    fn reserved_records_read_back_like_pushed_ones_across_the_wrap() {
        let (_m, lay) = ring(4096);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        for round in 0..20 {
            // A message goes in as FIRST + CONT records, whatever the split.
            let mut sent = 0;
            let mut got = Vec::new();
            while got.len() < msg.len() {
                if sent < msg.len() {
                    let kind = if sent == 0 { REC_FIRST } else { REC_CONT };
                    if let Some(n) = put_total(&mut tx, kind, &msg[sent..], 3000, false) {
                        assert!(n > 0);
                        sent += n;
                    }
                }
                while let Some(rec) = rx.peek().unwrap() {
                    assert_eq!(rec.kind, if got.is_empty() { REC_FIRST } else { REC_CONT }, "round {round}");
                    assert_eq!((rec.tag, rec.total), (9, 3000));
                    let mut b = vec![0u8; rec.len];
                    unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
                    got.extend_from_slice(&b);
                    rx.consume(rec.len);
                }
            }
            assert_eq!(got, msg, "round {round}");
            assert!(tx.is_drained().unwrap());
            assert_eq!(tx.consumed().unwrap(), tx.produced());
        }
    }

    #[test]
    fn spinning_hints_cpu_and_unread() {
        let (_m, lay) = ring(4096);
        let (a, b) = (lay.side(0), lay.side(1));
        assert!(!a.polls_on(0), "not known until set");
        a.set_cpu(3);
        assert!(a.polls_on(3) && !a.polls_on(0) && !b.polls_on(3), "per side");
        a.set_cpu(u32::MAX);
        assert!(!a.polls_on(u32::MAX), "an unknown CPU matches nothing");
        a.set_cpu(0);
        assert!(a.polls_on(0));
        a.clear_cpu();
        assert!(!a.polls_on(0));
        let cur = current_cpu();
        assert!(cur == u32::MAX || (cur as usize) < 4096, "a CPU number");

        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        assert!(!tx.unread());
        put(&mut tx, REC_FIRST, b"abc", false).unwrap();
        assert!(tx.unread(), "written, not read");
        let rec = rx.peek().unwrap().unwrap();
        rx.consume(rec.len);
        assert!(!tx.unread(), "read");
    }

    #[test]
    fn whole_records_are_never_split_and_full_rings_say_none() {
        let (_m, lay) = ring(4096);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        assert!(tx.reserve(1025, true).is_err(), "whole records fit a quarter of the ring");
        let m = [7u8; 1000];
        for i in 0..50 {
            while put(&mut tx, REC_FIRST, &m, true).is_some() {}
            // Full: a whole record waits, a splittable one may take a piece.
            assert!(tx.reserve(1000, true).unwrap().is_none(), "iteration {i}");
            let rec = rx.peek().unwrap().unwrap();
            assert_eq!((rec.kind, rec.len, rec.total), (REC_FIRST, 1000, 1000));
            rx.consume(rec.len);
        }
        // Zero-length records work too.
        while let Some(rec) = rx.peek().unwrap() {
            rx.consume(rec.len);
        }
        assert_eq!(put(&mut tx, REC_FIRST, &[], true), Some(0));
        assert_eq!(rx.peek().unwrap().unwrap().len, 0);
    }

    #[test]
    fn commit_refuses_what_was_not_reserved() {
        let (_m, lay) = ring(4096);
        let mut tx = lay.tx(0);
        assert!(tx.commit(REC_FIRST, 0, 0, 5000).is_err());
        assert!(tx.commit(REC_PAD, 0, 0, 10).is_err());
        let (_, n) = tx.reserve(100, false).unwrap().unwrap();
        assert_eq!(n, 100);
        tx.commit(REC_FIRST, 0, 100, 100).unwrap();
        assert_eq!(tx.produced(), record_span(100) as u64);
    }

    #[test]
    fn held_records_stay_until_released() {
        let (_m, lay) = ring(4096);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        for i in 0..3u8 {
            assert_eq!(put(&mut tx, REC_FIRST, &[i; 1000], false), Some(1000));
        }
        rx.hold();
        let mut ptrs = Vec::new();
        while let Some(rec) = rx.peek().unwrap() {
            ptrs.push(rx.payload());
            rx.consume(rec.len);
        }
        assert_eq!(ptrs.len(), 3, "all three visible while held");
        assert!(!tx.is_drained().unwrap(), "nothing given back yet");
        assert!(put(&mut tx, REC_FIRST, &[9; 1000], true).is_none(), "the producer cannot overwrite held bytes");
        for (i, p) in ptrs.iter().enumerate() {
            assert_eq!(unsafe { p.read() }, i as u8);
        }
        rx.release();
        assert!(tx.is_drained().unwrap());
        assert_eq!(put(&mut tx, REC_FIRST, &[9; 1000], true), Some(1000));
    }

    #[test]
    fn held_records_go_back_up_to_a_position() {
        let (_m, lay) = ring(4096);
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        let mut k = 0u8;
        while put(&mut tx, REC_FIRST, &[k; 1000], true).is_some() {
            k += 1;
        }
        assert!(k >= 3);
        rx.hold();
        let mut at = Vec::new();
        while let Some(rec) = rx.peek().unwrap() {
            rx.consume(rec.len);
            at.push(rx.position());
        }
        assert_eq!(at.len(), k as usize);
        // The first record back: room for one more, not two; the others'
        // bytes stay.
        rx.release_to(at[0]);
        assert_eq!(put(&mut tx, REC_FIRST, &[77; 1000], true), Some(1000));
        assert!(put(&mut tx, REC_FIRST, &[88; 1000], true).is_none());
        rx.release_to(at[k as usize - 1]);
        assert_eq!(put(&mut tx, REC_FIRST, &[88; 1000], true), Some(1000));
        let rec = rx.peek().unwrap().unwrap();
        assert_eq!(unsafe { rx.payload().read() }, 77);
        rx.consume(rec.len);
    }

    #[test]
    fn a_lying_consumer_is_caught() {
        let (_m, lay) = ring(4096);
        let mut tx = lay.tx(0);
        let (_, n) = tx.reserve(100, false).unwrap().unwrap();
        tx.commit(REC_FIRST, 0, 100, n).unwrap();
        // The consumer claims to have released more than was produced.
        lay.ring(0).1.store(1 << 20, Ordering::Release);
        assert!(matches!(tx.consumed(), Err(Error::Corrupt(_))));
    }
}

#[cfg(test)]
mod trim_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::{Arc, Mutex};

    fn ring(size: usize) -> (Arc<SharedMem>, Layout) {
        let mem = Arc::new(SharedMem::create("trim", file_len(size)).unwrap());
        init(&mem, size);
        let lay = Layout::new(&mem, size).unwrap();
        (mem, lay)
    }

    /// Bytes of the file the kernel has pages for.
    fn committed(mem: &SharedMem) -> usize {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor we hold, into a local.
        assert_eq!(unsafe { libc::fstat(mem.fd().as_raw_fd(), &mut st) }, 0);
        st.st_blocks as usize * 512
    }

    /// Message `seq`: its length and bytes (a checksum of sorts: every
    /// byte depends on the sequence number and its position).
    fn msg(seq: u64) -> Vec<u8> {
        let len = [8usize, 100, 1000, 4000, 16000, 30000][(seq % 6) as usize];
        (0..len).map(|i| (seq as usize * 31 + i * 7) as u8).collect()
    }

    fn put(tx: &mut Tx, seq: u64) -> bool {
        let m = msg(seq);
        tx.push_record(REC_FIRST, seq as u32, seq, &m).unwrap()
    }

    fn take(rx: &mut Rx) -> Option<(u64, Vec<u8>)> {
        let rec = rx.peek().unwrap()?;
        let mut b = vec![0u8; rec.len];
        unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
        rx.consume(rec.len);
        Some((rec.total, b))
    }

    /// Streams through all of ring 0 so that every page is committed;
    /// returns its ends.
    fn stream_through(lay: &Layout, size: usize) -> (Tx, Rx) {
        let (mut tx, mut rx) = (lay.tx(0), lay.rx(1));
        stream(&mut tx, &mut rx, 0, 2 * size as u64);
        (tx, rx)
    }

    /// Sends messages from `seq` on, each time as many as the ring takes,
    /// and reads all but the newest (so that the ring is never empty, as in
    /// a stream: a ring emptied at every message rewinds and keeps to its
    /// first pages), checking every one, until `bytes` more ring bytes were
    /// produced; then reads the rest.
    fn stream(tx: &mut Tx, rx: &mut Rx, mut seq: u64, bytes: u64) {
        let end = tx.produced() + bytes;
        let mut next = seq;
        while tx.produced() < end {
            while put(tx, next) {
                next += 1;
            }
            while seq + 1 < next {
                assert_eq!(take(rx), Some((seq, msg(seq))));
                seq += 1;
            }
        }
        while seq < next {
            assert_eq!(take(rx), Some((seq, msg(seq))));
            seq += 1;
        }
    }

    #[test]
    fn trimming_an_idle_empty_ring_gives_its_pages_back_and_it_still_works() {
        let size = 1 << 20;
        let (mem, lay) = ring(size);
        let (mut tx, mut rx) = stream_through(&lay, size);
        let before = committed(&mem);
        assert!(before >= size, "the ring streamed: all of it committed ({before})");
        let (head, tail, _) = lay.counters(0);
        assert_eq!(head, tail);
        let got = lay.trim(&mem, 0, head, false).unwrap();
        assert!(matches!(got, Trim::Done { punched } if punched >= size - TRIM_KEEP - 4096), "{got:?}");
        let after = committed(&mem);
        assert!(after <= CTRL_LEN + TRIM_KEEP + 4096, "{after} bytes still committed (was {before})");
        // The kept pages are the ones the next record goes to: a small
        // message commits nothing new.
        assert!(tx.push_record(REC_FIRST, 1, 5, b"hello").unwrap());
        assert_eq!(committed(&mem), after);
        assert_eq!(take(&mut rx), Some((5, b"hello".to_vec())));
        // And the whole ring works again, every byte intact.
        stream(&mut tx, &mut rx, 0, 2 * size as u64);
        let again = committed(&mem);
        assert!(again >= size - (64 << 10), "streaming commits it again ({again} bytes)");
        // Trimming the other (never used) ring is harmless.
        let (h1, _, _) = lay.counters(1);
        assert!(matches!(lay.trim(&mem, 1, h1, false).unwrap(), Trim::Done { .. }));
    }

    #[test]
    fn a_ring_with_data_in_it_or_that_moved_is_never_trimmed() {
        let size = 1 << 20;
        let (mem, lay) = ring(size);
        let (mut tx, mut rx) = stream_through(&lay, size);
        let before = committed(&mem);
        // Unread data.
        assert!(put(&mut tx, 7));
        let (head, _, _) = lay.counters(0);
        assert_eq!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Busy);
        assert_eq!(lay.trim(&mem, 0, head, true).unwrap(), Trim::Busy);
        // Read but held (not released): still the reader's.
        rx.hold();
        assert_eq!(take(&mut rx), Some((7, msg(7))));
        let p = rx.payload();
        assert_eq!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Busy);
        assert_eq!(committed(&mem), before);
        rx.release();
        // Empty now, but it moved since the head the caller saw idle.
        assert_eq!(lay.trim(&mem, 0, head - 64, false).unwrap(), Trim::Busy);
        assert_eq!(committed(&mem), before);
        let _ = p;
        assert!(matches!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Done { .. }));
        assert!(committed(&mem) < before);
    }

    #[test]
    fn hostile_handshake_words_make_trims_give_up_and_writers_back_off_without_hanging() {
        let size = 1 << 20;
        let (mem, lay) = ring(size);
        let (mut tx, mut rx) = stream_through(&lay, size);
        let before = committed(&mem);
        let (writing, trimming) = lay.gate(0);
        // A writer that keeps `writing` set: the trim gives up at once.
        writing.store(1, Ordering::SeqCst);
        let (head, _, _) = lay.counters(0);
        for _ in 0..1000 {
            assert_eq!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Busy);
        }
        assert_eq!(committed(&mem), before, "nothing punched");
        assert_eq!(trimming.load(Ordering::SeqCst), 0, "the trimmer leaves its word clear");
        writing.store(0, Ordering::SeqCst);
        // A peer that keeps `trimming` set: a shared writer reports no
        // room (after a bounded wait), a private one writes regardless.
        trimming.store(1, Ordering::SeqCst);
        assert!(!put(&mut tx, 1), "backs off");
        assert!(tx.reserve(100, false).unwrap().is_none());
        assert_eq!(writing.load(Ordering::SeqCst), 0, "and does not keep its word set");
        trimming.store(0, Ordering::SeqCst);
        assert!(put(&mut tx, 3));
        assert_eq!(take(&mut rx), Some((3, msg(3))));
        {
            let (_m, lay) = ring(4096);
            lay.gate(0).1.store(1, Ordering::SeqCst);
            let (mut own, mut rx) = (lay.tx_private(0), lay.rx(1));
            assert!(own.push_record(REC_FIRST, 0, 2, b"xy").unwrap(), "a private writer ignores the shared words");
            assert_eq!(take(&mut rx), Some((2, b"xy".to_vec())));
        }
        // A reservation keeps the ring from being trimmed until its commit.
        let (p, n) = tx.reserve(8, true).unwrap().unwrap();
        let (head, _, _) = lay.counters(0);
        assert_eq!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Busy);
        unsafe { std::ptr::copy_nonoverlapping(b"reserved".as_ptr(), p, n) };
        tx.commit(REC_FIRST, 0, 8, n).unwrap();
        assert_eq!(take(&mut rx), Some((8, b"reserved".to_vec())));
        let (head, _, _) = lay.counters(0);
        assert!(matches!(lay.trim(&mem, 0, head, false).unwrap(), Trim::Done { .. }));
        // A shared writer cannot commit what it did not reserve.
        assert!(tx.commit(REC_FIRST, 0, 0, 0).is_err());
    }

    /// A writer streams checksummed messages, pausing now and then, a
    /// reader checks every one, and a trimmer trims whenever it finds the
    /// ring empty: no byte is lost or changed, and trims do happen.
    fn hammer(private: bool) {
        let size = 256 << 10;
        let (mem, lay) = ring(size);
        let n_msgs = 10_000u64;
        let done = Arc::new(AtomicBool::new(false));
        // Trims done so far (the writer's pauses wait for one).
        let trimmed = Arc::new(AtomicU64::new(0));
        // The private writer is kept out by a lock, as the router's is.
        let tx = Arc::new(Mutex::new(if private { lay.tx_private(0) } else { lay.tx(0) }));
        let writer = {
            let (tx, trimmed) = (tx.clone(), trimmed.clone());
            std::thread::spawn(move || {
                let mut seq = 0;
                while seq < n_msgs {
                    if put(&mut tx.lock().unwrap(), seq) {
                        seq += 1;
                        if seq % 50 == 0 {
                            // A pause: the reader empties the ring and the
                            // trimmer gets its chance (however loaded the
                            // machine; at most 100 ms), then writing
                            // resumes, racing the next trims.
                            let (t0, until) = (trimmed.load(Ordering::Relaxed), Instant::now() + Duration::from_millis(100));
                            while trimmed.load(Ordering::Relaxed) == t0 && Instant::now() < until {
                                std::thread::sleep(Duration::from_micros(50));
                            }
                        }
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let reader = {
            let lay = SendLayout(lay);
            std::thread::spawn(move || {
                let lay = lay;
                let mut rx = lay.0.rx(1);
                let mut seq = 0;
                while seq < n_msgs {
                    match take(&mut rx) {
                        Some((total, b)) => {
                            assert_eq!(total, seq, "in order, none lost");
                            assert!(b == msg(seq), "message {seq} intact");
                            seq += 1;
                        }
                        None => std::thread::yield_now(),
                    }
                }
            })
        };
        let (mut trims, mut busy) = (0u64, 0u64);
        let mut last = lay.counters(0).0;
        while !writer.is_finished() || !reader.is_finished() {
            let (head, tail, _) = lay.counters(0);
            if head == tail && head != last {
                let r = if private {
                    match tx.try_lock() {
                        Ok(_g) => lay.trim(&mem, 0, head, true).unwrap(),
                        Err(_) => Trim::Busy,
                    }
                } else {
                    lay.trim(&mem, 0, head, false).unwrap()
                };
                match r {
                    Trim::Done { .. } => {
                        trims += 1;
                        trimmed.store(trims, Ordering::Relaxed);
                        last = head;
                    }
                    Trim::Busy => busy += 1,
                }
            }
            std::thread::yield_now();
        }
        done.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        reader.join().unwrap();
        eprintln!("private={private}: {trims} trims, {busy} given up");
        assert!(trims >= 10, "trimming happened only {trims} times");
    }

    struct SendLayout(Layout);
    // SAFETY: the mapping outlives the threads (joined before `mem` drops).
    unsafe impl Send for SendLayout {}

    #[test]
    fn a_writer_hammering_while_a_trimmer_trims_loses_nothing() {
        hammer(false);
    }

    #[test]
    fn the_routers_own_writer_is_kept_out_by_its_lock() {
        hammer(true);
    }
}
