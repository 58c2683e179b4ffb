//! Router-to-router links over RDMA: one RC queue pair per stream, the same
//! frames as over TCP ([`crate::wire`]), behind the same [`Link`] trait.
//!
//! **Status: the logic below is tested against [`FakeVerbs`] (an in-process
//! model of a NIC) and has run on soft-RoCE in emulated guests
//! (`testkit/softroce.sh`); it has not run on RDMA hardware.** The real
//! verbs ([`ib`], libibverbs through the `ibverbs-sys` crate) are picked
//! when `ibverbs::devices()` lists a device that serves the address.
//!
//! Per stream, each router owns a *landing ring* (registered, 1 MiB) that its
//! peer fills with RDMA writes, and a *staging buffer* it writes from. A
//! batch of frames becomes records in the peer's landing ring:
//!
//! ```text
//! 0   kind: 1 inline, 2 remote, 3 pad       (records are 64-byte aligned
//! 4   span: record bytes                      and never wrap; a pad fills
//! 8   the wire header (32 bytes)              the end of the ring)
//! 40  inline: the payload
//!     remote: addr u64, rkey u32, token u32 — where the payload lies in
//!             the sender's registered connection ring
//! ```
//!
//! written with RDMA WRITE, the last one WRITE_WITH_IMM so the peer gets one
//! receive completion per batch. Small payloads (up to [`INLINE_MAX`]) are
//! copied into the record; big ones stay in the sending connection's ring
//! (registered with the NIC when the connection starts forwarding) or in
//! the client's shadow region they were sent from (registered on first
//! use, for as long as the region lives: [`Link::register_region`]), and
//! the receiving router RDMA READs them straight into its own connection
//! ring, or into the shadow region of the receive its client posted: no
//! copy on either host. The reader then acks them (an ACK immediate) so
//! the sender may release the ring bytes.
//!
//! Many WRITEs in flight: the staging buffer is a ring of batches, each as
//! long as its records, so a sender posts the next batch without waiting
//! for the NIC to have sent the ones before (up to [`STAGED_MAX`]), however
//! small they are: a pump that hands the link one big message per turn
//! sends one 64-byte record per batch.
//!
//! Many READs in flight: a sender does not wait for the acks of one batch
//! before the next ([`Link::send_unacked`] returns a ticket, the number of
//! its last remote payload; the forwarding engine gives ring bytes back to
//! the client once [`Link::reads_done`] says the peer acked up to it: acks
//! are cumulative, one per [`ACK_EVERY`] remote records consumed in a row,
//! or sooner when nothing more has landed). The receiver reads the remote
//! payloads that have landed behind the one being consumed *ahead*, into a
//! registered per-stream buffer ([`AHEAD_BUF`], up to the queue pair's READ
//! depth: what both devices allow, at most [`READS_MAX`]),
//! and copies each to its destination when the engine asks for it: one copy
//! on the receiving host, instead of one round trip per payload. A payload
//! with nothing behind it (request/response) or over [`AHEAD_ONE_MAX`]
//! is still READ on demand straight into its destination.
//!
//! Immediates (32 bits): `00` + bytes written; `01` + landing bytes freed / 64
//! (credit for the landing ring, returned in quarters); `10` + token (READs
//! done up to the remote payload with this number on the stream, in 30
//! bits); `11` ping. Landing credit bounds what a sender writes; connection
//! credits ([`crate::wire`]) bound the rest, so a receiver never runs out of
//! room.
//!
//! Liveness, the same rule as over TCP: pings, credits and acks are bare
//! immediates posted straight to the queue pair, never behind a stream's
//! sender (who may be waiting for credit or for the peer's READs), and any
//! completion that arrives on any stream, whoever drains it, counts as
//! hearing from the peer router. A peer *host* that is gone fails our next
//! operation (a ping goes every 500 ms) once the NIC has retransmitted it
//! for [`NIC_RETRY_BUDGET`] (the RDMA counterpart of TCP's user timeout); a
//! peer *router* whose NIC still answers but that sends nothing at all for
//! [`SILENT_AFTER`] (30 s) is taken for hung. An emulated or congested
//! fabric that goes quiet for seconds is neither. A sender holds its stream
//! only to stage and post a batch (and for the NIC to take the staged
//! bytes); it waits for the peer's READs of its payloads without it. A
//! stream's operations may stall while the NIC retransmits (1.07 s per
//! retry): an operation fails the link after [`OP_TIMEOUT`], longer than
//! the NIC's budget, and the credit or ack that answers our payloads after
//! [`ANSWER_TIMEOUT`] without progress, longer than two such budgets.
//!
//! Registration bookkeeping: each ring of a connection file is registered
//! when its forwarding starts and deregistered when it ends, after the peer
//! has acked every READ from it and any READ into it has finished (the
//! receiver holds its stream while it reads, and falls back to a registered
//! bounce buffer for memory that is not registered). In between, the
//! trimmer may have the link let go of an idle ring ([`Link::unpin`]) before
//! punching its pages out; the link's pinner thread registers it again
//! ([`RdmaLink::reg_now`]), on the pages the file has then, when the next
//! transfer needs it, which meanwhile goes through the bounce buffer (a
//! READ into it) or is copied into its record (a frame from it; one too
//! big for a record waits for the registration: [`RdmaLink::reg_for`]).
//! A shadow region is registered the first time a frame is sent from it or
//! a receive is posted in it, and deregistered by the sweep on the next
//! PING after its last reference is gone: whoever sends from it keeps a
//! reference until the peer acked its READs, and whoever READs into it
//! until the READ is over, so no operation uses a registration the sweep
//! takes; nor is a gone region's registration ever matched against a new
//! mapping that took its addresses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use ffcore::shm::SharedMem;

use super::verbs::{Cq, Endpoint, Mr, Op, QpState, SendWr, Sge, Verbs, WcKind, READS_MAX};
use super::{Frame, Link, SILENT_AFTER};
use crate::wire::HDR_LEN;

pub const LANDING: usize = 1 << 20;
/// The queue pairs' ACK timeout, as the exponent of 4.096 us: 2^18 is
/// 1.07 s (NCCL_IB_TIMEOUT's older default; NCCL now takes 20, 4.3 s).
pub const ACK_TIMEOUT_EXP: u8 = 18;
/// Retransmissions before the NIC fails an operation.
pub const RETRY_CNT: u8 = 7;
/// How long the NIC may retransmit one operation before it fails it: the
/// first try and every retry each wait one ACK timeout.
pub const NIC_RETRY_BUDGET: Duration = Duration::from_micros(4096 * (1 << ACK_TIMEOUT_EXP) / 1000 * (RETRY_CNT as u64 + 1));
/// The longest one of our RDMA operations may take. Longer than the NIC's
/// own retransmission budget, so that a lost packet, which costs one ACK
/// timeout, never fails the link; an operation the NIC gives up on fails
/// it with an error completion.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(OP_TIMEOUT.as_micros() > NIC_RETRY_BUDGET.as_micros());
/// The longest the peer's credit or ack for our payloads may take without
/// progress. An ack answers two operations in a row, each of which the
/// NICs may retransmit for their whole budget: the peer's READ of our
/// payload, then the immediate that carries the ack (on soft-RoCE under
/// emulation, 10 s was seen to pass while both NICs were still
/// retransmitting, and the link was failed for it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
const _: () = assert!(ANSWER_TIMEOUT.as_micros() > 2 * NIC_RETRY_BUDGET.as_micros());

pub const STAGING: usize = 512 << 10;
/// The staging buffer is a ring of batches, each at most [`SLOT`] bytes
/// and as long as the records it holds: a batch is posted without waiting
/// for the NIC to have sent the ones before (it waits only before reusing
/// their bytes), so a slow link keeps many WRITEs in flight, however small
/// the batches (a few 64-byte records of remote payloads each).
const SLOT: usize = STAGING / 4;
/// Staged batches in flight at most per stream: the send queue
/// ([`SEND_DEPTH`]) also holds the stream's READs, acks, credits and pings.
const STAGED_MAX: usize = 128;
pub const BOUNCE: usize = 64 << 10;
/// The largest payload copied into a record (memory not registered with
/// the NIC): a record fits a batch.
pub const UNREGISTERED_MAX: usize = SLOT - 64;
/// Payloads up to this size are copied into the record; bigger ones are
/// read by the receiver from the sender's registered memory.
pub const INLINE_MAX: usize = 16 << 10;
/// Per stream, remote payloads that wait behind the one being read are
/// READ ahead into a registered buffer of this size (as many READs in
/// flight as fit, at most the queue pair's READ depth,
/// [`Verbs::read_depth`], up to [`READS_MAX`]: more would only queue and
/// hold up the acks and pings posted after them), then copied to their
/// destination: 64 payloads of 64 KiB.
pub const AHEAD_BUF: usize = 4 << 20;
/// Payloads over this size, and one with nothing behind it, are READ on
/// demand straight into their destination (no copy).
pub const AHEAD_ONE_MAX: usize = 512 << 10;
/// A receiver acks the remote payloads it consumed (cumulatively: one ack
/// says "up to this one") once this many are owed, or as soon as nothing
/// more has landed behind them, so a stream of payloads costs the sender
/// one ack immediate (a packet and a receive completion) per few payloads,
/// and a lone payload is acked at once.
const ACK_EVERY: u32 = 8;
const RECV_DEPTH: u32 = 512;
const SEND_DEPTH: u32 = 512;

const REC_INLINE: u32 = 1;
const REC_REMOTE: u32 = 2;
const REC_PAD: u32 = 3;
const REC_HEAD: usize = 8 + HDR_LEN;
const DESC: usize = 16;

const IMM_DATA: u32 = 0;
const IMM_CREDIT: u32 = 1 << 30;
const IMM_ACK: u32 = 2 << 30;
const IMM_PING: u32 = 3 << 30;
const IMM_MASK: u32 = (1 << 30) - 1;
/// wr_ids with this bit are not waited for (credits, acks).
const FORGET: u64 = 1 << 63;

fn span_of(payload: usize) -> usize {
    (REC_HEAD + payload).div_ceil(64) * 64
}

fn broken(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what.into())
}

/// What the flags say about the RDMA device (`--rdma-device`,
/// `--rdma-gid-index`), and the address it must serve.
#[derive(Debug, Clone, Default)]
pub struct Want {
    pub device: Option<String>,
    pub gid_index: Option<u32>,
    /// The address the peer routers reach us at.
    pub ip: Option<std::net::IpAddr>,
}

/// Why there is no usable RDMA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoDevice {
    /// No device at all (or no RDMA support).
    None(String),
    /// Devices, but none fits the address or the flags.
    NoMatch(String),
}

impl std::fmt::Display for NoDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoDevice::None(s) | NoDevice::NoMatch(s) => f.write_str(s),
        }
    }
}

/// The device, port and GID to use ([`gid`] has the rule), or why none.
pub fn probe(want: &Want) -> Result<gid::Choice, NoDevice> {
    #[cfg(feature = "rdma")]
    {
        let names: Vec<String> = match ibverbs::devices() {
            Err(e) => return Err(NoDevice::None(e.to_string())),
            Ok(l) if l.is_empty() => return Err(NoDevice::None("no RDMA devices".into())),
            Ok(l) => l.iter().filter_map(|d| d.name().map(|n| n.to_string_lossy().into_owned())).collect(),
        };
        let Some(ip) = want.ip else { return Err(NoDevice::NoMatch("no address to pick a GID for".into())) };
        let gids = gid::scan(std::path::Path::new(gid::SYSFS)).unwrap_or_default();
        // Only devices libibverbs can open.
        let gids: Vec<gid::Gid> = gids.into_iter().filter(|g| names.contains(&g.device)).collect();
        if let Some(d) = &want.device {
            if !names.contains(d) {
                return Err(NoDevice::NoMatch(format!("--rdma-device {d}: no such device (devices: {})", names.join(", "))));
            }
        }
        gid::choose(&gids, ip, &gid::netdevs_with(ip), want.device.as_deref(), want.gid_index).map_err(NoDevice::NoMatch)
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = want;
        Err(NoDevice::None("ffrouter was built without the rdma feature".into()))
    }
}

/// Setup bounds. Each side reports every step of its setup to the other
/// over the first TCP stream (a queue pair and its buffers made, a queue
/// pair connected), so a peer that is slow but progressing is waited for (on
/// soft-RoCE under emulation one router took 8-10 s for its four queue pairs
/// and their registrations), and one that makes no step for
/// [`SETUP_STEP_TIMEOUT`] is given up on; the whole setup never takes longer
/// than [`SETUP_LIMIT`].
pub const SETUP_STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub const SETUP_LIMIT: Duration = Duration::from_secs(40);

/// The byte stream a setup runs over (a TCP stream; tests use Unix sockets).
pub trait Boot: Read + Write {
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

impl Boot for TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Boot for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// Turns the TCP streams of a freshly handshaken link into an RDMA link:
/// the first stream carries the queue pair exchange (and stays open); the
/// link gets as many queue pairs as there were streams. `progress` is
/// called at every step of the setup, either side's.
pub fn over_tcp_bootstrap(mut socks: Vec<TcpStream>, what: String, dev: &gid::Choice, progress: &dyn Fn()) -> io::Result<Arc<dyn Link>> {
    #[cfg(feature = "rdma")]
    {
        let n = socks.len();
        let mut boot = socks.swap_remove(0);
        drop(socks);
        let t0 = Instant::now();
        let v: Arc<dyn Verbs> = Arc::new(ib::IbVerbs::open(dev)?);
        progress();
        let link = RdmaLink::connect(v, &mut boot, n, what, progress)?;
        log::debug!("{}: RDMA setup took {:?}", link.what, t0.elapsed());
        Ok(Arc::new(link.keep(boot)))
    }
    #[cfg(not(feature = "rdma"))]
    {
        socks.clear();
        let _ = (what, dev, progress);
        Err(io::Error::other("ffrouter was built without the rdma feature"))
    }
}

/// Tests: an RDMA link on the process-wide fake fabric, set up through the
/// TCP streams of a handshaken link like the real one. Every operation of
/// its NIC completes after `delay`; every queue pair and registration of its
/// setup takes `setup`; it moves `rate` bytes per second (None: no limit).
#[cfg(test)]
pub fn over_fake(mut socks: Vec<TcpStream>, what: String, delay: Duration, setup: Duration, rate: Option<f64>, progress: &dyn Fn()) -> io::Result<Arc<dyn Link>> {
    let n = socks.len();
    let mut boot = socks.swap_remove(0);
    let mut nic = fake_fabric().slow_nic(delay).with_setup_delay(setup);
    if let Some(r) = rate {
        nic = nic.with_rate(r);
    }
    let v: Arc<dyn Verbs> = Arc::new(nic);
    let link = RdmaLink::connect(v, &mut boot, n, what, progress)?;
    Ok(Arc::new(link.keep(boot)))
}

/// Tests: the process-wide fake fabric the links of [`over_fake`] are on.
#[cfg(test)]
pub fn fake_fabric() -> &'static super::verbs::Fabric {
    static FABRIC: std::sync::OnceLock<super::verbs::Fabric> = std::sync::OnceLock::new();
    FABRIC.get_or_init(Default::default)
}

/// Reads `buf` from the peer's setup: its next step must come within
/// [`SETUP_STEP_TIMEOUT`], and before `deadline`.
fn read_step(boot: &mut impl Boot, buf: &mut [u8], deadline: Instant, what: &str) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("RDMA setup: not done within {SETUP_LIMIT:?}")));
    }
    boot.set_timeouts(left.min(SETUP_STEP_TIMEOUT))?;
    boot.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("RDMA setup: the peer router made no step for {:?} (waiting for {what})", left.min(SETUP_STEP_TIMEOUT)),
        ),
        io::ErrorKind::UnexpectedEof => io::Error::new(io::ErrorKind::UnexpectedEof, format!("RDMA setup: the peer router closed the connection (waiting for {what})")),
        _ => e,
    })
}

/// A registered buffer owned by the link.
struct Buf {
    mem: Box<[u8]>,
    mr: Mr,
}

impl Buf {
    fn new(v: &dyn Verbs, len: usize) -> io::Result<Buf> {
        let mut mem = vec![0u8; len].into_boxed_slice();
        let mr = v.reg_mr(mem.as_mut_ptr(), len)?;
        Ok(Buf { mem, mr })
    }

    fn ptr(&self) -> *mut u8 {
        self.mem.as_ptr() as *mut u8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerRing {
    addr: u64,
    rkey: u32,
    len: u64,
}

struct TxSide {
    staging: Buf,
    /// Bytes written into the peer's landing ring so far.
    wpos: u64,
    /// Remote payloads staged so far: the last one's number is its ticket
    /// (see [`Link::send_unacked`]) and, in 30 bits, its ack token.
    seq: u64,
    /// Staging bytes allocated so far (the ring's head; batches never
    /// wrap), and the batches the NIC may still be reading, oldest first:
    /// (their WRITE, where they start).
    s_head: u64,
    posted: VecDeque<(u64, u64)>,
}

#[derive(Clone, Copy)]
enum Cur {
    Idle,
    Inline { at: u64, left: usize, span: usize },
    /// `ahead`: the payload is (being) read into the read-ahead buffer
    /// (the front of `RxSide::ahead`); otherwise it is read on demand,
    /// straight into the destination.
    Remote { addr: u64, rkey: u32, token: u32, off: u64, left: usize, span: usize, ahead: bool },
}

/// A landing record, checked.
enum Rec {
    Pad { span: usize },
    Inline { h: [u8; HDR_LEN], n: usize, span: usize },
    Remote { h: [u8; HDR_LEN], n: usize, span: usize, addr: u64, rkey: u32, token: u32 },
}

/// A remote payload being read ahead: the record at landing position
/// `pos` said `n` bytes at `addr`/`rkey` (ack `token`); READ `wr_id` puts
/// them at `at` in the read-ahead buffer, whose bytes up to `end` (in
/// allocation order) it holds.
struct Ahead {
    pos: u64,
    n: usize,
    addr: u64,
    rkey: u32,
    token: u32,
    at: usize,
    end: u64,
    wr_id: u64,
    done: bool,
}

struct RxSide {
    /// Landing bytes consumed.
    rpos: u64,
    /// Freed since the last credit.
    freed: u64,
    cur: Cur,
    bounce: Buf,
    /// Remote payloads read ahead, in landing order, and the landing
    /// position up to which records were looked at for that.
    ahead: VecDeque<Ahead>,
    scan: u64,
    /// The read-ahead buffer ([`AHEAD_BUF`], registered on first use) as
    /// a ring: bytes allocated up to `a_head`, freed up to `a_tail`.
    abuf: Option<Buf>,
    a_head: u64,
    a_tail: u64,
    /// Remote payloads consumed but not yet acked, and the last one's token.
    owed: u32,
    owed_token: u32,
}

struct Signals {
    /// Landing bytes of the peer's ring it has released (our credit).
    peer_freed: u64,
    /// Remote payloads posted, and acknowledged (acks are cumulative).
    sent: u64,
    acked: u64,
    /// While acks are owed (`sent > acked`): when one last arrived, or when
    /// the first was owed.
    owed_since: Instant,
    /// Credits and acks received so far (progress, for bounded waits).
    events: u64,
}

struct Stream {
    qp: u32,
    landing: Buf,
    peer: PeerRing,
    tx: Mutex<TxSide>,
    rx: Mutex<RxSide>,
    /// Held while polling the receive queue (any thread may: see
    /// [`RdmaLink::drain_recv`]).
    drain: Mutex<()>,
    /// Set (under `drain`) while the stream's receiver waits for frames:
    /// it drains the queue then, and nobody else does.
    rx_waits: AtomicBool,
    /// Landing bytes the peer has written (its data immediates).
    avail: AtomicU64,
    sig: Mutex<Signals>,
    sig_cv: Condvar,
    /// Send completions seen but not yet claimed, by wr_id (status).
    done: Mutex<HashMap<u64, u32>>,
    next_wr: AtomicU64,
    /// Ack immediates posted (tests count them).
    acks_sent: AtomicU64,
    /// READs it keeps in flight ([`Verbs::read_depth`]).
    reads: usize,
}

/// The registered parts of connection files (their rings), each on its
/// own so that the trimmer can take one's pages back ([`Link::unpin`]), by
/// address (a lookup per big frame: a thousand rings at 512 connections).
/// Shared with the link's pinner thread ([`RdmaLink::reg_now`]).
struct Regs {
    v: Arc<dyn Verbs>,
    what: String,
    parts: RwLock<BTreeMap<u64, Pin>>,
    /// Numbers the claims ([`PinState::Busy`]): a registration finished
    /// late stores its result only in the claim it was made for, never in
    /// a part registered anew at the same address since.
    claims: AtomicU64,
}

/// A part of a connection file ([`Link::register`]) and its state.
struct Pin {
    addr: u64,
    len: usize,
    state: PinState,
}

#[derive(Clone, Copy)]
enum PinState {
    Pinned(Mr),
    /// Its pages were given back ([`Link::unpin`]): the next transfer from
    /// or into it has it registered again ([`RdmaLink::reg_for`],
    /// [`RdmaLink::reg_now`]).
    Unpinned,
    /// A thread is registering it now (not under the lock: pinning every
    /// page takes long), under this claim.
    Busy(u64),
}

impl Pin {
    fn covers(&self, addr: u64, len: usize) -> bool {
        super::verbs::covers(self.addr, self.len, addr, len)
    }
}

impl Regs {
    /// The part covering the bytes, if any: (its address, length, state).
    fn part(&self, addr: u64, len: usize) -> Option<(u64, usize, PinState)> {
        let g = self.parts.read().unwrap();
        g.range(..=addr).next_back().map(|(_, p)| p).filter(|p| p.covers(addr, len)).map(|p| (p.addr, p.len, p.state))
    }

    /// Claims the part at `addr` for registering if it is unpinned now
    /// (else None: pinned, or another thread got there first).
    fn claim(&self, addr: u64, len: usize) -> Option<u64> {
        let mut g = self.parts.write().unwrap();
        let p = g.get_mut(&addr).filter(|p| p.len == len)?;
        if !matches!(p.state, PinState::Unpinned) {
            return None;
        }
        let c = self.claims.fetch_add(1, Ordering::Relaxed);
        p.state = PinState::Busy(c);
        Some(c)
    }

    /// Gives a claim up without registering.
    fn unclaim(&self, addr: u64, len: usize, claim: u64) {
        if let Some(p) = self.parts.write().unwrap().get_mut(&addr).filter(|p| p.len == len && matches!(p.state, PinState::Busy(c) if c == claim)) {
            p.state = PinState::Unpinned;
        }
    }

    /// Registers a part this thread claimed, pinning its pages without
    /// holding the lock; a part deregistered meanwhile (its connection
    /// ended) is let go of again.
    fn register_claimed(&self, addr: u64, len: usize, claim: u64, again: bool) -> io::Result<Mr> {
        let t = Instant::now();
        let r = self.v.reg_mr(addr as *mut u8, len);
        let mut g = self.parts.write().unwrap();
        let Some(p) = g.get_mut(&addr).filter(|p| p.len == len && matches!(p.state, PinState::Busy(c) if c == claim)) else {
            drop(g);
            if let Ok(mr) = r {
                let _ = self.v.dereg_mr(&mr);
            }
            return Err(io::Error::other("the connection file was deregistered meanwhile"));
        };
        match r {
            Ok(mr) => {
                p.state = PinState::Pinned(mr);
                let again = if again { " again (its first transfer since it was let go of)" } else { "" };
                log::debug!("{}: registered {len} bytes of a connection file with the NIC{again} in {:?}", self.what, t.elapsed());
                Ok(mr)
            }
            Err(e) => {
                p.state = PinState::Unpinned;
                log::warn!("{}: the NIC would not register {len} bytes of a connection file: {e}", self.what);
                Err(e)
            }
        }
    }
}

/// Shadow regions registered on first use ([`Link::register_region`]),
/// each for as long as its mapping lives. An entry whose region has no
/// strong reference left is never matched again (its mapping is gone or
/// going, and its addresses may be reused by a new mapping) and is
/// deregistered by the next sweep; none of our operations can still use
/// it, since whoever sends from or reads into a region holds a reference
/// until the operation is over. `refused`: regions the NIC would not
/// register (copied instead; not tried again while they live).
#[derive(Default)]
struct Regions {
    live: Vec<(Weak<SharedMem>, Mr)>,
    refused: Vec<Weak<SharedMem>>,
}

pub struct RdmaLink {
    v: Arc<dyn Verbs>,
    streams: Vec<Stream>,
    regs: Arc<Regs>,
    /// Registers again the rings a stream's receiver found let go of
    /// ([`RdmaLink::reg_now`]); started on first use.
    pinner: Mutex<Option<std::sync::mpsc::Sender<(u64, usize, u64)>>>,
    regions: RwLock<Regions>,
    dead: AtomicBool,
    why: Mutex<String>,
    what: String,
    /// When something last arrived from the peer, on any stream.
    heard: Mutex<Instant>,
    /// The peer router is taken for hung after this long without anything
    /// from it on any stream ([`SILENT_AFTER`], as over TCP).
    silent_after: Duration,
    /// Many READs in flight (read-ahead, senders not waiting for acks);
    /// `FF_RDMA_PIPELINE=0` turns both off (an experiment knob, read when
    /// a link is made: the benchmarks compare the two).
    pipeline: bool,
    /// Shadow regions registered with the NIC ([`Link::register_region`]);
    /// `FF_RDMA_REGIONS=0` copies their bytes into records instead (an
    /// experiment knob, read when a link is made).
    region_reg: bool,
    _boot: Option<TcpStream>,
}

/// Clears a stream's `rx_waits` when its receiver returns.
struct Back<'a>(&'a AtomicBool);

impl Drop for Back<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Per-stream connection info exchanged at setup.
const INFO_LEN: usize = Endpoint::LEN + 16;

impl RdmaLink {
    /// Creates `n` queue pairs and connects them to the peer's through
    /// `boot` (any byte stream to the peer router; both sides run this).
    /// Each side sends each queue pair's info as soon as it is made, and a
    /// byte for each once it is connected (ready to receive): every one is
    /// a step the other side waits for (see [`SETUP_STEP_TIMEOUT`]), and
    /// `progress` is called at each step, ours or the peer's.
    pub fn connect(v: Arc<dyn Verbs>, boot: &mut impl Boot, n: usize, what: String, progress: &dyn Fn()) -> io::Result<RdmaLink> {
        let deadline = Instant::now() + SETUP_LIMIT;
        let mut made: Vec<(u32, Buf, Buf, Buf)> = Vec::with_capacity(n);
        let res = (|| {
            boot.set_timeouts(SETUP_STEP_TIMEOUT)?;
            for i in 0..n {
                let qp = v.create_qp(SEND_DEPTH, RECV_DEPTH)?;
                let mut bufs = Vec::with_capacity(3);
                for len in [LANDING, STAGING, BOUNCE] {
                    match Buf::new(&*v, len) {
                        Ok(b) => bufs.push(b),
                        Err(e) => {
                            for b in &bufs {
                                let _ = v.dereg_mr(&b.mr);
                            }
                            v.destroy_qp(qp);
                            return Err(e);
                        }
                    }
                }
                let (c, b, a) = (bufs.pop().unwrap(), bufs.pop().unwrap(), bufs.pop().unwrap());
                made.push((qp, a, b, c));
                let x = &made[i];
                let mut info = Vec::with_capacity(INFO_LEN);
                info.extend_from_slice(&v.endpoint(x.0)?.encode());
                info.extend_from_slice(&x.1.mr.addr.to_le_bytes());
                info.extend_from_slice(&x.1.mr.rkey.to_le_bytes());
                info.extend_from_slice(&(LANDING as u32).to_le_bytes());
                boot.write_all(&info)?;
                progress();
            }
            log::debug!("{what}: {n} queue pairs and their buffers made; connecting them to the peer's");
            let mut rings = Vec::with_capacity(n);
            for (i, (qp, _, _, _)) in made.iter().enumerate() {
                let mut b = [0u8; INFO_LEN];
                read_step(boot, &mut b, deadline, &format!("queue pair {i} of {n}"))?;
                progress();
                let (e, r) = b.split_at(Endpoint::LEN);
                let ep = Endpoint::decode(e.try_into().unwrap());
                let ring = PeerRing {
                    addr: u64::from_le_bytes(r[0..8].try_into().unwrap()),
                    rkey: u32::from_le_bytes(r[8..12].try_into().unwrap()),
                    len: u32::from_le_bytes(r[12..16].try_into().unwrap()) as u64,
                };
                if ring.len < 4096 || !ring.len.is_multiple_of(64) || ring.len > 1 << 30 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad landing ring from the peer router"));
                }
                v.modify_qp(*qp, QpState::Init, None)?;
                for k in 0..RECV_DEPTH {
                    v.post_recv(*qp, k as u64)?;
                }
                v.modify_qp(*qp, QpState::Rtr, Some(&ep))?;
                v.modify_qp(*qp, QpState::Rts, None)?;
                rings.push((ring, v.read_depth(*qp)?.clamp(1, READS_MAX as usize)));
                // This queue pair is ready to receive.
                boot.write_all(b"R")?;
                progress();
            }
            // Both sides are ready to receive on every queue pair before
            // anyone writes.
            for i in 0..n {
                let mut r = [0u8; 1];
                read_step(boot, &mut r, deadline, &format!("queue pair {i} of {n} to be ready"))?;
                if &r != b"R" {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad RDMA setup reply"));
                }
                progress();
            }
            log::debug!("{what}: queue pairs ready");
            Ok(rings)
        })();
        let rings = match res {
            Ok(r) => r,
            Err(e) => {
                for (qp, a, b, c) in &made {
                    v.destroy_qp(*qp);
                    for m in [a, b, c] {
                        let _ = v.dereg_mr(&m.mr);
                    }
                }
                return Err(e);
            }
        };
        let streams = made
            .into_iter()
            .zip(rings)
            .map(|((qp, landing, staging, bounce), (peer, reads))| Stream {
                qp,
                landing,
                peer,
                tx: Mutex::new(TxSide { staging, wpos: 0, seq: 0, s_head: 0, posted: VecDeque::new() }),
                rx: Mutex::new(RxSide { rpos: 0, freed: 0, cur: Cur::Idle, bounce, ahead: VecDeque::new(), scan: 0, abuf: None, a_head: 0, a_tail: 0, owed: 0, owed_token: 0 }),
                drain: Mutex::new(()),
                rx_waits: AtomicBool::new(false),
                avail: AtomicU64::new(0),
                sig: Mutex::new(Signals { peer_freed: 0, sent: 0, acked: 0, owed_since: Instant::now(), events: 0 }),
                sig_cv: Condvar::new(),
                done: Mutex::default(),
                next_wr: AtomicU64::new(1),
                acks_sent: AtomicU64::new(0),
                reads,
            })
            .collect();
        Ok(RdmaLink {
            regs: Arc::new(Regs { v: v.clone(), what: what.clone(), parts: RwLock::default(), claims: AtomicU64::new(0) }),
            pinner: Mutex::new(None),
            v,
            streams,
            regions: RwLock::default(),
            dead: AtomicBool::new(false),
            why: Mutex::default(),
            what,
            heard: Mutex::new(Instant::now()),
            silent_after: SILENT_AFTER,
            pipeline: std::env::var("FF_RDMA_PIPELINE").map_or(true, |v| v != "0"),
            region_reg: std::env::var("FF_RDMA_REGIONS").map_or(true, |v| v != "0"),
            _boot: None,
        })
    }

    /// Keeps the bootstrap connection open for the link's lifetime.
    pub fn keep(mut self, boot: TcpStream) -> RdmaLink {
        self._boot = Some(boot);
        self
    }

    /// Tests: a shorter silence limit than [`SILENT_AFTER`].
    #[cfg(test)]
    fn silent_after(mut self, d: Duration) -> RdmaLink {
        self.silent_after = d;
        self
    }

    fn fail(&self, why: String) -> io::Error {
        if !self.dead.swap(true, Ordering::AcqRel) {
            *self.why.lock().unwrap() = why.clone();
            for s in &self.streams {
                let _ = self.v.modify_qp(s.qp, QpState::Error, None);
                s.sig_cv.notify_all();
            }
        }
        broken(why)
    }

    fn check(&self) -> io::Result<()> {
        if self.dead.load(Ordering::Acquire) {
            return Err(broken(self.why.lock().unwrap().clone()));
        }
        Ok(())
    }

    /// The registration covering `[addr, addr + len)`, if any: a
    /// connection file's, or a live shadow region's. (The caller's bytes
    /// lie in a mapping it keeps alive, so a region entry that covers them
    /// and still lives is that mapping's.) A ring the trimmer let go of
    /// is registered again here, by its first transfer since: a pump's
    /// frame too big to be copied into a record.
    fn reg_for(&self, addr: u64, len: usize) -> Option<Mr> {
        loop {
            match self.regs.part(addr, len) {
                Some((_, _, PinState::Pinned(mr))) => return Some(mr),
                Some((a, l, PinState::Unpinned)) => {
                    if let Some(r) = self.pin(a, l, true) {
                        return r.ok();
                    }
                }
                // Another thread registers it: it takes a moment.
                Some((_, _, PinState::Busy(_))) => std::thread::sleep(Duration::from_micros(200)),
                None => return self.region_for(addr, len),
            }
        }
    }

    /// As [`RdmaLink::reg_for`], without waiting: for a stream's receiver,
    /// which READs into the ring towards a client and holds up every
    /// connection of its stream while it waits, and for a pump's frames
    /// that fit a record. A ring let go of is registered again by the
    /// link's pinner thread meanwhile, and this transfer goes without it
    /// (None: through the bounce buffer, or copied into the record).
    fn reg_now(&self, addr: u64, len: usize) -> Option<Mr> {
        match self.regs.part(addr, len) {
            Some((_, _, PinState::Pinned(mr))) => Some(mr),
            Some((a, l, PinState::Unpinned)) => {
                self.pin_later(a, l);
                None
            }
            Some((_, _, PinState::Busy(_))) => None,
            None => self.region_for(addr, len),
        }
    }

    /// The live shadow region's registration covering the bytes, if any.
    fn region_for(&self, addr: u64, len: usize) -> Option<Mr> {
        let g = self.regions.read().unwrap();
        g.live.iter().find(|(w, mr)| mr.covers(addr, len) && w.strong_count() > 0).map(|r| r.1)
    }

    /// Hands the part at `addr` (unpinned now, else nothing is done) to
    /// the link's pinner thread, started on first use: one per link, and
    /// a part waits there at most once (it is claimed until registered).
    fn pin_later(&self, addr: u64, len: usize) {
        let Some(claim) = self.regs.claim(addr, len) else { return };
        let mut g = self.pinner.lock().unwrap();
        if g.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<(u64, usize, u64)>();
            let regs = self.regs.clone();
            // Ends when the link is dropped (and with it the sender).
            let t = std::thread::Builder::new().name("ff-rdma-pin".into()).spawn(move || {
                for (a, l, c) in rx {
                    let _ = regs.register_claimed(a, l, c, true);
                }
            });
            match t {
                Ok(_) => *g = Some(tx),
                Err(e) => log::warn!("{}: no thread to register rings again ({e}): transfers into them go through the bounce buffer", self.what),
            }
        }
        if g.as_ref().is_none_or(|tx| tx.send((addr, len, claim)).is_err()) {
            self.regs.unclaim(addr, len, claim);
        }
    }

    /// Registers the part at `addr` (of `len` bytes) if it is unpinned now
    /// (else None: another thread got there first), pinning its pages
    /// without holding the lock.
    fn pin(&self, addr: u64, len: usize, again: bool) -> Option<io::Result<Mr>> {
        let claim = self.regs.claim(addr, len)?;
        Some(self.regs.register_claimed(addr, len, claim, again))
    }

    /// Forgets the registered parts of `mem` and returns the registrations
    /// to undo. (A part being registered now is its registering thread's
    /// to let go of: it finds the part gone.)
    fn forget(&self, mem: &SharedMem) -> Vec<Mr> {
        let (start, end) = (mem.as_ptr() as u64, mem.as_ptr() as u64 + mem.len() as u64);
        let mut r = self.regs.parts.write().unwrap();
        let mut parts = r.split_off(&start);
        r.append(&mut parts.split_off(&end));
        parts.into_values().filter_map(|p| if let PinState::Pinned(mr) = p.state { Some(mr) } else { None }).collect()
    }

    /// Deregisters the shadow regions that are gone.
    fn sweep_regions(&self) {
        let dead: Vec<Mr> = {
            let mut g = self.regions.write().unwrap();
            g.refused.retain(|w| w.strong_count() > 0);
            let (live, dead) = std::mem::take(&mut g.live).into_iter().partition(|(w, _)| w.strong_count() > 0);
            g.live = live;
            dead.into_iter().map(|(_, mr)| mr).collect()
        };
        for mr in dead {
            if let Err(e) = self.v.dereg_mr(&mr) {
                log::warn!("{}: deregistering a shadow region: {e}", self.what);
            }
        }
    }

    fn post(&self, s: &Stream, wr: &SendWr) -> io::Result<()> {
        self.v.post_send(s.qp, wr).map_err(|e| match self.reap(s) {
            // An earlier operation failed (and took the queue pair down):
            // that is the news.
            Err(first) => first,
            Ok(()) => self.fail(format!("post_send: {e}")),
        })
    }

    /// A zero-length WRITE_WITH_IMM (credit or ack), not waited for.
    fn post_imm(&self, s: &Stream, imm: u32) -> io::Result<()> {
        let wr_id = FORGET | s.next_wr.fetch_add(1, Ordering::Relaxed);
        self.post(s, &SendWr { wr_id, op: Op::WriteImm(imm), sges: vec![], remote_addr: s.peer.addr, rkey: s.peer.rkey, signaled: true })
    }

    /// Polls the send queue's completions once; errors kill the link.
    fn reap(&self, s: &Stream) -> io::Result<()> {
        // Held across the poll: a waiter that looks at `done` once its wait
        // is armed (`Verbs::wait`) finds what was polled before, recorded.
        let mut done = s.done.lock().unwrap();
        let wcs = self.v.poll(s.qp, Cq::Send, 32).map_err(|e| self.fail(format!("poll: {e}")))?;
        for wc in wcs {
            if wc.status != 0 {
                drop(done);
                return Err(self.fail(format!("RDMA operation failed (status {})", wc.status)));
            }
            if wc.wr_id & FORGET == 0 {
                done.insert(wc.wr_id, wc.status);
            }
        }
        Ok(())
    }

    /// Waits for the send completion of `wr_id`.
    fn wait_wr(&self, s: &Stream, wr_id: u64, what: &str, len: usize) -> io::Result<()> {
        let start = Instant::now();
        let slow = |t: Duration| {
            if t > Duration::from_secs(1) {
                crate::limited!(warn, "rdma-slow", "", "{}: an RDMA {what} of {len} bytes took {t:?}", self.what);
            }
        };
        loop {
            self.check()?;
            if s.done.lock().unwrap().remove(&wr_id).is_some() {
                slow(start.elapsed());
                return Ok(());
            }
            self.reap(s)?;
            if s.done.lock().unwrap().remove(&wr_id).is_some() {
                slow(start.elapsed());
                return Ok(());
            }
            let spent = start.elapsed();
            if spent > OP_TIMEOUT {
                return Err(self.fail(format!("an RDMA {what} of {len} bytes did not complete in {OP_TIMEOUT:?}")));
            }
            if spent > Duration::from_micros(20) {
                let _ = self.v.wait(s.qp, Cq::Send, Duration::from_millis(1), &|| s.done.lock().unwrap().contains_key(&wr_id));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Handles receive completions (immediates from the peer); reposts the
    /// receives. Returns whether anything arrived. The stream's receiver
    /// drains (`block`) while it waits for frames; a sender that waits for
    /// credit or acks drains (not `block`) only while the receiver is busy
    /// elsewhere, and gives up at once when another thread is draining.
    ///
    /// Only the receiver sleeps for the queue's completions. Had a sender
    /// drained a data immediate between the receiver's last look and its
    /// sleep, the receiver would sleep its whole nap (100 ms) with a frame
    /// landed: seen on the fake NIC, many times a second while streaming.
    /// So a receiver that found nothing says so under the lock
    /// (`rx_waits`), looks at what senders drained before, and only then
    /// sleeps; until it is back, senders leave the queue to it (its sleep
    /// ends with the next completion, and it hands them their credits and
    /// acks).
    fn drain_recv(&self, s: &Stream, block: bool) -> io::Result<bool> {
        let _one = if block {
            s.drain.lock().unwrap()
        } else {
            match s.drain.try_lock() {
                Ok(g) if !s.rx_waits.load(Ordering::Relaxed) => g,
                _ => return Ok(false),
            }
        };
        let wcs = self.v.poll(s.qp, Cq::Recv, 32).map_err(|e| self.fail(format!("poll: {e}")))?;
        let any = !wcs.is_empty();
        if block {
            s.rx_waits.store(!any, Ordering::Relaxed);
        }
        if any {
            *self.heard.lock().unwrap() = Instant::now();
        }
        for wc in wcs {
            if wc.status != 0 {
                return Err(self.fail(format!("the peer router's queue pair failed (status {})", wc.status)));
            }
            let WcKind::RecvImm(imm) = wc.kind else {
                return Err(self.fail("unexpected receive completion".into()));
            };
            match imm & !IMM_MASK {
                IMM_DATA => {
                    // Checked against the landing ring by the receiver.
                    s.avail.fetch_add((imm & IMM_MASK) as u64, Ordering::AcqRel);
                }
                IMM_CREDIT => {
                    let mut sig = s.sig.lock().unwrap();
                    sig.peer_freed += (imm & IMM_MASK) as u64 * 64;
                    sig.events += 1;
                    s.sig_cv.notify_all();
                }
                IMM_ACK => {
                    let mut sig = s.sig.lock().unwrap();
                    // The peer reads our payloads in order and acks them
                    // cumulatively: up to the one whose token this is, one
                    // we sent and it had not acked yet.
                    let step = (imm & IMM_MASK).wrapping_sub(sig.acked as u32) & IMM_MASK;
                    if step == 0 || step as u64 > sig.sent - sig.acked {
                        drop(sig);
                        return Err(self.fail(format!("the peer router acknowledged payload {} out of order", imm & IMM_MASK)));
                    }
                    sig.acked += step as u64;
                    sig.owed_since = Instant::now();
                    sig.events += 1;
                    s.sig_cv.notify_all();
                }
                _ => {} // IMM_PING: only says the peer lives.
            }
            self.v.post_recv(s.qp, wc.wr_id).map_err(|e| self.fail(format!("post_recv: {e}")))?;
        }
        Ok(any)
    }

    /// Releases `span` landing bytes (a consumed record).
    fn release(&self, s: &Stream, rx: &mut RxSide, span: usize) -> io::Result<()> {
        rx.rpos += span as u64;
        rx.freed += span as u64;
        rx.cur = Cur::Idle;
        if rx.freed >= (LANDING / 4) as u64 {
            let units = (rx.freed / 64) as u32;
            rx.freed = 0;
            self.post_imm(s, IMM_CREDIT | units)?;
        }
        Ok(())
    }

    fn landing_at(s: &Stream, pos: u64) -> *mut u8 {
        // SAFETY: the offset is reduced modulo the ring's length.
        unsafe { s.landing.ptr().add((pos % LANDING as u64) as usize) }
    }

    /// Waits until `done` holds for the stream's signals (landing credit,
    /// acks). Fails the link when the peer sends neither credit nor ack on
    /// the stream for [`ANSWER_TIMEOUT`]: a peer that keeps reading, however
    /// slowly, is waited for.
    fn wait_signal(&self, s: &Stream, mut done: impl FnMut(&Signals) -> bool) -> io::Result<()> {
        let mut seen = None;
        let mut since = Instant::now();
        loop {
            {
                let sig = s.sig.lock().unwrap();
                if done(&sig) {
                    return Ok(());
                }
                if seen != Some(sig.events) {
                    seen = Some(sig.events);
                    since = Instant::now();
                }
            }
            self.check()?;
            if since.elapsed() > ANSWER_TIMEOUT {
                return Err(self.fail(format!("the peer router sent no credit or ack for {ANSWER_TIMEOUT:?}")));
            }
            // The stream's receiver drains immediates while it waits for
            // frames; when it is busy elsewhere, drain them here.
            if self.drain_recv(s, false)? {
                continue;
            }
            let sig = s.sig.lock().unwrap();
            if done(&sig) {
                return Ok(());
            }
            drop(s.sig_cv.wait_timeout(sig, Duration::from_micros(200)).unwrap());
        }
    }

    /// Waits until the peer has read (acknowledged) our remote payloads up
    /// to number `ticket`, at most until `deadline` (then Ok(false)). Fails
    /// the link when acks are owed and none came for [`ANSWER_TIMEOUT`].
    fn wait_reads(&self, s: &Stream, ticket: u64, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            {
                let sig = s.sig.lock().unwrap();
                if sig.acked >= ticket {
                    return Ok(true);
                }
                if sig.owed_since.elapsed() > ANSWER_TIMEOUT {
                    drop(sig);
                    return Err(self.fail(format!("the peer router acknowledged none of our payloads for {ANSWER_TIMEOUT:?}")));
                }
            }
            self.check()?;
            // The stream's receiver drains immediates while it waits for
            // frames; when it is busy elsewhere, drain them here.
            if self.drain_recv(s, false)? {
                continue;
            }
            let mut nap = Duration::from_micros(200);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                nap = nap.min(left);
            }
            let sig = s.sig.lock().unwrap();
            if sig.acked >= ticket {
                return Ok(true);
            }
            drop(s.sig_cv.wait_timeout(sig, nap).unwrap());
        }
    }

    /// Makes room for the next batch: [`SLOT`] staging bytes that no
    /// batch the NIC may still be reading occupies, and a place in
    /// [`STAGED_MAX`]; returns their offset in the staging buffer.
    fn stage_room(&self, s: &Stream, tx: &mut TxSide) -> io::Result<usize> {
        let mut off = (tx.s_head % STAGING as u64) as usize;
        if off + SLOT > STAGING {
            tx.s_head += (STAGING - off) as u64;
            off = 0;
        }
        // Bytes at ring position p share the buffer with p + STAGING.
        let reuse = (tx.s_head + SLOT as u64).saturating_sub(STAGING as u64);
        while let Some(&(wr, start)) = tx.posted.front() {
            if start >= reuse && tx.posted.len() < STAGED_MAX {
                break;
            }
            self.wait_wr(s, wr, "WRITE", SLOT)?;
            tx.posted.pop_front();
        }
        Ok(off)
    }

    /// Waits until the NIC has sent every staged batch of the stream.
    fn wait_writes(&self, s: &Stream) -> io::Result<()> {
        let mut tx = s.tx.lock().unwrap();
        while let Some(&(wr, _)) = tx.posted.front() {
            self.wait_wr(s, wr, "WRITE", SLOT)?;
            tx.posted.pop_front();
        }
        Ok(())
    }

    /// Posts the staged bytes `[base, base + len)` at landing position
    /// `at`, split at the end of the ring; the last write carries the
    /// immediate.
    fn post_staged(&self, s: &Stream, tx: &TxSide, base: usize, at: u64, len: usize) -> io::Result<u64> {
        let peer_len = s.peer.len;
        let off = at % peer_len;
        let first = len.min((peer_len - off) as usize);
        let pieces = [(0usize, off, first), (first, 0u64, len - first)];
        let wr_id = s.next_wr.fetch_add(1, Ordering::Relaxed);
        let last = if len - first > 0 { 1 } else { 0 };
        for (i, &(from, to, n)) in pieces.iter().enumerate().take(last + 1) {
            let sge = Sge { addr: tx.staging.mr.addr + (base + from) as u64, len: n as u32, lkey: tx.staging.mr.lkey };
            let op = if i == last { Op::WriteImm(IMM_DATA | len as u32) } else { Op::Write };
            let id = if i == last { wr_id } else { FORGET | s.next_wr.fetch_add(1, Ordering::Relaxed) };
            self.post(s, &SendWr { wr_id: id, op, sges: vec![sge], remote_addr: s.peer.addr + to, rkey: s.peer.rkey, signaled: i == last })?;
        }
        Ok(wr_id)
    }
}

impl Link for RdmaLink {
    fn streams(&self) -> usize {
        self.streams.len()
    }

    unsafe fn send(&self, si: usize, frames: &[Frame]) -> io::Result<()> {
        let ticket = self.send_unacked(si, frames)?;
        let s = &self.streams[si];
        self.wait_writes(s)?;
        self.wait_reads(s, ticket, None).map(|_| ())
    }

    unsafe fn send_unacked(&self, si: usize, frames: &[Frame]) -> io::Result<u64> {
        self.check()?;
        // A ring the trimmer let go of: frames that fit a record are copied
        // into it while the link's pinner registers the ring again
        // (`reg_now` below), so that neither this pump worker nor the
        // connections it serves wait for the pinning (a 4 MiB ring took
        // 30 ms to 1.35 s on emulated rxe). A bigger frame needs the
        // registration: made here, not under the stream's lock below,
        // which every connection on the stream shares.
        for f in frames.iter().filter(|f| f.len > UNREGISTERED_MAX) {
            self.reg_for(f.ptr as u64, f.len);
        }
        let s = &self.streams[si];
        let mut tx = s.tx.lock().unwrap();
        let peer_len = s.peer.len;
        let mut i = 0;
        let mut ticket = 0;
        while i < frames.len() {
            // Stage as many records as fit a batch, mirroring their
            // positions in the peer's landing ring, in staging bytes the
            // NIC is done with.
            let base = self.stage_room(s, &mut tx)?;
            let start = tx.wpos;
            let mut pos = start;
            while i < frames.len() {
                let f = &frames[i];
                let remote = if f.len <= INLINE_MAX {
                    None
                } else if f.len <= UNREGISTERED_MAX {
                    self.reg_now(f.ptr as u64, f.len)
                } else {
                    self.reg_for(f.ptr as u64, f.len)
                };
                let body = if remote.is_some() { DESC } else { f.len };
                let span = span_of(body);
                if span > SLOT.min(peer_len as usize / 2) {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame payload too big for an unregistered buffer"));
                }
                let off = pos % peer_len;
                let pad = if off + span as u64 > peer_len { (peer_len - off) as usize } else { 0 };
                let used = (pos - start) as usize;
                // A record never wraps: the pad before it may take a batch
                // of its own (a batch holds one record of the largest span).
                if used + pad + span > SLOT && !(used == 0 && pad > 0) {
                    break;
                }
                let st = tx.staging.ptr().add(base);
                if pad > 0 {
                    let p = st.add(used);
                    (p as *mut u32).write_unaligned(REC_PAD);
                    (p.add(4) as *mut u32).write_unaligned(pad as u32);
                    pos += pad as u64;
                }
                if (pos - start) as usize + span > SLOT {
                    break;
                }
                let p = st.add((pos - start) as usize);
                (p as *mut u32).write_unaligned(if remote.is_some() { REC_REMOTE } else { REC_INLINE });
                (p.add(4) as *mut u32).write_unaligned(span as u32);
                std::ptr::copy_nonoverlapping(f.hdr.as_ptr(), p.add(8), HDR_LEN);
                match remote {
                    Some(mr) => {
                        tx.seq += 1;
                        ticket = tx.seq;
                        (p.add(REC_HEAD) as *mut u64).write_unaligned(f.ptr as u64);
                        (p.add(REC_HEAD + 8) as *mut u32).write_unaligned(mr.rkey);
                        (p.add(REC_HEAD + 12) as *mut u32).write_unaligned(tx.seq as u32 & IMM_MASK);
                    }
                    None => {
                        if f.len > 0 {
                            std::ptr::copy_nonoverlapping(f.ptr, p.add(REC_HEAD), f.len);
                        }
                    }
                }
                pos += span as u64;
                i += 1;
            }
            let len = (pos - start) as usize;
            // Landing credit: the peer must have released enough.
            self.wait_signal(s, |sig| pos - sig.peer_freed <= peer_len)?;
            {
                // Before the records go: the peer may ack at once.
                let mut sig = s.sig.lock().unwrap();
                if sig.sent == sig.acked && tx.seq > sig.sent {
                    sig.owed_since = Instant::now();
                }
                sig.sent = tx.seq;
            }
            let wr = self.post_staged(s, &tx, base, start, len)?;
            tx.wpos = pos;
            if self.pipeline {
                let at = tx.s_head;
                tx.posted.push_back((wr, at));
                tx.s_head += len as u64;
            } else {
                self.wait_wr(s, wr, "WRITE", len)?;
            }
        }
        // The frames are posted in order: others may send on the stream
        // (pings, credits, other connections) while the peer reads our
        // payloads, which must stay until read (the caller's part).
        drop(tx);
        if !self.pipeline {
            self.wait_reads(s, ticket, None)?;
            return Ok(0);
        }
        Ok(ticket)
    }

    fn unregistered_max(&self) -> usize {
        UNREGISTERED_MAX
    }

    fn op_timeout(&self) -> Duration {
        OP_TIMEOUT
    }

    fn reads_done(&self, si: usize, ticket: u64, wait: Duration) -> io::Result<bool> {
        self.wait_reads(&self.streams[si], ticket, Some(Instant::now() + wait))
    }

    fn ping(&self, si: usize) -> io::Result<()> {
        self.check()?;
        if si == 0 {
            // Every PING_EVERY: shadow regions freed meanwhile let go of
            // the pages the NIC pinned.
            self.sweep_regions();
        }
        self.post_imm(&self.streams[si], IMM_PING)
    }

    fn readable(&self, si: usize) -> bool {
        // Only the stream's receiver calls this, between frames; a sender
        // draining immediates meanwhile makes it say "no" this once.
        let s = &self.streams[si];
        let Ok(rx) = s.rx.try_lock() else { return false };
        let landed = || s.avail.load(Ordering::Acquire) > rx.rpos;
        if landed() {
            return true;
        }
        // A broken link: recv_header says why.
        self.drain_recv(s, false).is_err() || landed() || self.check().is_err()
    }

    fn recv_header(&self, si: usize) -> io::Result<[u8; HDR_LEN]> {
        let s = &self.streams[si];
        let mut rx = s.rx.lock().unwrap();
        if !matches!(rx.cur, Cur::Idle) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "previous payload not consumed"));
        }
        // Busy elsewhere once back: senders drain again.
        let _back = Back(&s.rx_waits);
        let start = Instant::now();
        loop {
            self.check()?;
            let avail = s.avail.load(Ordering::Acquire);
            if avail - rx.rpos > LANDING as u64 {
                return Err(self.fail("the peer router overran our landing ring".into()));
            }
            if rx.rpos < avail {
                let rec = Self::record_at(s, rx.rpos, avail).map_err(|e| self.fail(e))?;
                let (h, n, span) = match rec {
                    Rec::Pad { span } => {
                        self.release(s, &mut rx, span)?;
                        continue;
                    }
                    Rec::Inline { h, n, span } => {
                        rx.cur = Cur::Inline { at: rx.rpos + REC_HEAD as u64, left: n, span };
                        (h, n, span)
                    }
                    Rec::Remote { h, n, span, addr, rkey, token } => {
                        self.read_ahead(s, &mut rx, avail)?;
                        let ahead = match rx.ahead.front() {
                            Some(a) if a.pos == rx.rpos => {
                                // Read ahead from what the record said then:
                                // it must still say so.
                                if (a.n, a.addr, a.rkey, a.token) != (n, addr, rkey, token) {
                                    return Err(self.fail("a landing record changed after it was read ahead".into()));
                                }
                                true
                            }
                            _ => false,
                        };
                        rx.cur = Cur::Remote { addr, rkey, token, off: 0, left: n, span, ahead };
                        (h, n, span)
                    }
                };
                let _ = span;
                if n == 0 {
                    self.finish(s, &mut rx)?;
                }
                return Ok(h);
            }
            if self.drain_recv(s, true)? || s.avail.load(Ordering::Acquire) > rx.rpos {
                continue;
            }
            // Nothing more to consume: what we consumed is acked before we wait.
            self.flush_ack(s, &mut rx)?;
            // Failed credits/acks show on the send side.
            self.reap(s)?;
            // Silence since we began waiting and since anything (a ping,
            // credit, ack) arrived on any stream, whoever drained it.
            let spent = start.elapsed().min(self.heard.lock().unwrap().elapsed());
            let dead = self.silent_after;
            if spent > dead {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing from the peer router for {dead:?}")));
            }
            if spent > Duration::from_micros(20) {
                // Not holding the stream meanwhile: nothing is being READ
                // into local memory now, and `deregister` (a pump worker
                // ending a connection) must not wait for the next frame.
                let rpos = rx.rpos;
                drop(rx);
                let _ = self.v.wait(s.qp, Cq::Recv, Duration::from_millis(100).min(dead - spent), &|| s.avail.load(Ordering::Acquire) > rpos);
                rx = s.rx.lock().unwrap();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    unsafe fn recv_payload(&self, si: usize, dst: *mut u8, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let s = &self.streams[si];
        let mut rx = s.rx.lock().unwrap();
        match rx.cur {
            Cur::Idle => Err(io::Error::new(io::ErrorKind::InvalidInput, "no payload pending")),
            Cur::Inline { at, left, span } => {
                if n > left {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload read past its end"));
                }
                std::ptr::copy_nonoverlapping(Self::landing_at(s, at), dst, n);
                rx.cur = Cur::Inline { at: at + n as u64, left: left - n, span };
                if left == n {
                    self.finish(s, &mut rx)?;
                }
                Ok(())
            }
            Cur::Remote { addr, rkey, token, off, left, span, ahead: true } => {
                if n > left {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload read past its end"));
                }
                let rx = &mut *rx;
                let a = rx.ahead.front_mut().expect("the record read ahead");
                if !a.done {
                    self.wait_wr(s, a.wr_id, "READ", a.n)?;
                    a.done = true;
                }
                let buf = rx.abuf.as_ref().expect("read-ahead buffer");
                // SAFETY: the READ of the record's a.n bytes at a.at
                // completed; off + n <= a.n (left counts down from a.n).
                std::ptr::copy_nonoverlapping(buf.ptr().add(a.at + off as usize), dst, n);
                rx.cur = Cur::Remote { addr, rkey, token, off: off + n as u64, left: left - n, span, ahead: true };
                if left == n {
                    let a = rx.ahead.pop_front().unwrap();
                    rx.a_tail = a.end;
                    self.finish(s, rx)?;
                }
                Ok(())
            }
            Cur::Remote { addr, rkey, token, off, left, span, ahead: false } => {
                if n > left {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload read past its end"));
                }
                let mut done = 0;
                while done < n {
                    self.check()?;
                    let here = dst.add(done) as u64;
                    let (sge, bounce) = match self.reg_now(here, n - done) {
                        Some(mr) => (Sge { addr: here, len: (n - done) as u32, lkey: mr.lkey }, false),
                        None => {
                            let k = (n - done).min(BOUNCE);
                            (Sge { addr: rx.bounce.mr.addr, len: k as u32, lkey: rx.bounce.mr.lkey }, true)
                        }
                    };
                    let wr_id = s.next_wr.fetch_add(1, Ordering::Relaxed);
                    let remote = addr + off + done as u64;
                    self.post(s, &SendWr { wr_id, op: Op::Read, sges: vec![sge], remote_addr: remote, rkey, signaled: true })?;
                    self.wait_wr(s, wr_id, "READ", sge.len as usize)?;
                    if bounce {
                        std::ptr::copy_nonoverlapping(rx.bounce.ptr(), dst.add(done), sge.len as usize);
                    }
                    done += sge.len as usize;
                }
                rx.cur = Cur::Remote { addr, rkey, token, off: off + n as u64, left: left - n, span, ahead: false };
                if left == n {
                    self.finish(s, &mut rx)?;
                }
                Ok(())
            }
        }
    }

    fn shutdown(&self) {
        let _ = self.fail("link shut down".into());
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn register(&self, mem: &Arc<SharedMem>, spans: &[Range<usize>]) -> io::Result<()> {
        // On the connect's path (the client waits): slow NICs show in the
        // debug lines `pin` writes.
        let parts: Vec<(u64, usize)> = spans
            .iter()
            .map(|sp| {
                assert!(sp.start <= sp.end && sp.end <= mem.len(), "a part outside the file");
                (mem.as_ptr() as u64 + sp.start as u64, sp.len())
            })
            .collect();
        self.regs.parts.write().unwrap().extend(parts.iter().map(|&(addr, len)| (addr, Pin { addr, len, state: PinState::Unpinned })));
        for &(addr, len) in &parts {
            if let Some(Err(e)) = self.pin(addr, len, false) {
                // Nothing moves through the connection yet: no READ to
                // wait out (and the caller may be a stream's receiver).
                for mr in self.forget(mem) {
                    let _ = self.v.dereg_mr(&mr);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn pinned_bytes(&self) -> usize {
        self.regs.parts.read().unwrap().values().filter(|p| matches!(p.state, PinState::Pinned(_))).map(|p| p.len).sum()
    }

    fn unpin(&self, mem: &SharedMem, span: Range<usize>) -> bool {
        let addr = mem.as_ptr() as u64 + span.start as u64;
        let mr = {
            let mut g = self.regs.parts.write().unwrap();
            let Some(p) = g.get_mut(&addr).filter(|p| p.len == span.len()) else { return true };
            match p.state {
                PinState::Pinned(mr) => {
                    p.state = PinState::Unpinned;
                    mr
                }
                PinState::Unpinned => return true,
                PinState::Busy(_) => return false,
            }
        };
        // No transfer uses the part (the caller's guarantee), so none of
        // ours waits to be drained here.
        match self.v.dereg_mr(&mr) {
            Ok(()) => {
                log::debug!("{}: let go of an idle ring of {} bytes (its pages go back; the next big transfer registers it again)", self.what, span.len());
                true
            }
            Err(e) => {
                log::warn!("{}: the NIC would not let go of an idle ring ({e}): its pages stay", self.what);
                if let Some(p) = self.regs.parts.write().unwrap().get_mut(&addr).filter(|p| p.len == span.len()) {
                    p.state = PinState::Pinned(mr);
                }
                false
            }
        }
    }

    fn pins_memory(&self) -> bool {
        true
    }

    fn register_region(&self, mem: &Arc<SharedMem>) -> bool {
        if !self.region_reg {
            return false;
        }
        let known = |g: &Regions| {
            if g.live.iter().any(|(w, _)| w.as_ptr() == Arc::as_ptr(mem)) {
                Some(true)
            } else if g.refused.iter().any(|w| w.as_ptr() == Arc::as_ptr(mem)) {
                Some(false)
            } else {
                None
            }
        };
        // (A Weak keeps its allocation: an entry pointing at `mem`'s is
        // `mem`'s own, which lives.)
        if let Some(k) = known(&self.regions.read().unwrap()) {
            return k;
        }
        self.sweep_regions();
        // Registering may take long (pinning every page): not under the lock.
        let t = Instant::now();
        let r = self.v.reg_mr(mem.as_ptr(), mem.len());
        let mut g = self.regions.write().unwrap();
        if let Some(k) = known(&g) {
            // Another thread registered it meanwhile.
            drop(g);
            if let Ok(mr) = r {
                let _ = self.v.dereg_mr(&mr);
            }
            return k;
        }
        match r {
            Ok(mr) => {
                log::debug!("{}: registered a shadow region of {} bytes with the NIC in {:?}", self.what, mem.len(), t.elapsed());
                g.live.push((Arc::downgrade(mem), mr));
                true
            }
            Err(e) => {
                log::warn!("{}: the NIC would not register a shadow region of {} bytes ({e}): its bytes are copied", self.what, mem.len());
                g.refused.push(Arc::downgrade(mem));
                false
            }
        }
    }

    fn deregister(&self, mem: &SharedMem) {
        let gone = self.forget(mem);
        if !gone.is_empty() {
            // Reads into it hold their stream: wait them out.
            for s in &self.streams {
                drop(s.rx.lock().unwrap());
            }
            for mr in gone {
                if let Err(e) = self.v.dereg_mr(&mr) {
                    log::warn!("{}: deregistering memory: {e}", self.what);
                }
            }
        }
    }
}

impl RdmaLink {
    /// Reads and checks the landing record at `pos` (the peer wrote the
    /// bytes up to `avail`).
    fn record_at(s: &Stream, pos: u64, avail: u64) -> Result<Rec, String> {
        let p = Self::landing_at(s, pos);
        let off = (pos % LANDING as u64) as usize;
        // SAFETY: off is 64-aligned inside the landing ring; the peer wrote
        // these bytes (published by its immediate).
        let (kind, span) = unsafe { ((p as *const u32).read_unaligned(), (p.add(4) as *const u32).read_unaligned() as usize) };
        if span < 64 || span % 64 != 0 || span > LANDING - off || span as u64 > avail - pos {
            return Err(format!("bad landing record span {span}"));
        }
        match kind {
            REC_PAD => return Ok(Rec::Pad { span }),
            REC_INLINE | REC_REMOTE => {}
            k => return Err(format!("bad landing record kind {k}")),
        }
        let mut h = [0u8; HDR_LEN];
        // SAFETY: REC_HEAD <= 64 <= span bytes lie in the ring.
        unsafe { std::ptr::copy_nonoverlapping(p.add(8), h.as_mut_ptr(), HDR_LEN) };
        let n = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        if kind == REC_INLINE {
            if REC_HEAD + n > span {
                return Err("landing record shorter than its payload".into());
            }
            return Ok(Rec::Inline { h, n, span });
        }
        if REC_HEAD + DESC > span {
            return Err("short remote record".into());
        }
        // SAFETY: as above.
        let (addr, rkey, token) = unsafe {
            (
                (p.add(REC_HEAD) as *const u64).read_unaligned(),
                (p.add(REC_HEAD + 8) as *const u32).read_unaligned(),
                (p.add(REC_HEAD + 12) as *const u32).read_unaligned(),
            )
        };
        Ok(Rec::Remote { h, n, span, addr, rkey, token })
    }

    /// Posts READs for the remote payloads that have landed from the
    /// current record on, in order, as far as the read-ahead buffer and
    /// stream's READ depth allow: many READs in flight instead of one round trip
    /// per payload. The current record is read ahead only when more have
    /// landed behind it (a lone one goes straight to its destination); too
    /// big ones are left to be read on demand. The NIC checks every READ
    /// against the peer's key and bounds, as on demand.
    fn read_ahead(&self, s: &Stream, rx: &mut RxSide, avail: u64) -> io::Result<()> {
        if !self.pipeline {
            return Ok(());
        }
        let mut pos = rx.scan.max(rx.rpos);
        while pos < avail && rx.ahead.len() < s.reads {
            let Ok(rec) = Self::record_at(s, pos, avail) else { break }; // recv_header says why
            let (n, span, addr, rkey, token) = match rec {
                Rec::Pad { span } | Rec::Inline { span, .. } => {
                    pos += span as u64;
                    continue;
                }
                Rec::Remote { n, span, addr, rkey, token, .. } => (n, span, addr, rkey, token),
            };
            if n == 0 || n > AHEAD_ONE_MAX {
                pos += span as u64;
                continue;
            }
            if pos == rx.rpos && rx.ahead.is_empty() && pos + span as u64 >= avail {
                break; // alone: on demand
            }
            // Room in the buffer (allocations do not wrap)?
            let off = (rx.a_head % AHEAD_BUF as u64) as usize;
            let skip = if off + n > AHEAD_BUF { AHEAD_BUF - off } else { 0 };
            if rx.a_head + (skip + n) as u64 - rx.a_tail > AHEAD_BUF as u64 {
                break;
            }
            if rx.abuf.is_none() {
                rx.abuf = Some(Buf::new(&*self.v, AHEAD_BUF).map_err(|e| self.fail(format!("registering the read-ahead buffer: {e}")))?);
            }
            let buf = rx.abuf.as_ref().unwrap();
            let at = (off + skip) % AHEAD_BUF;
            let wr_id = s.next_wr.fetch_add(1, Ordering::Relaxed);
            let sge = Sge { addr: buf.mr.addr + at as u64, len: n as u32, lkey: buf.mr.lkey };
            self.post(s, &SendWr { wr_id, op: Op::Read, sges: vec![sge], remote_addr: addr, rkey, signaled: true })?;
            rx.a_head += (skip + n) as u64;
            rx.ahead.push_back(Ahead { pos, n, addr, rkey, token, at, end: rx.a_head, wr_id, done: false });
            pos += span as u64;
        }
        rx.scan = pos;
        Ok(())
    }

    /// The current record's payload is consumed: ack a remote one, free
    /// its landing bytes.
    fn finish(&self, s: &Stream, rx: &mut RxSide) -> io::Result<()> {
        let (span, token) = match rx.cur {
            Cur::Inline { span, .. } => (span, None),
            Cur::Remote { span, token, .. } => (span, Some(token)),
            Cur::Idle => return Ok(()),
        };
        self.release(s, rx, span)?;
        if let Some(t) = token {
            rx.owed += 1;
            rx.owed_token = t;
            if rx.owed >= ACK_EVERY || s.avail.load(Ordering::Acquire) <= rx.rpos {
                self.flush_ack(s, rx)?;
            }
        }
        Ok(())
    }

    /// Acks the remote payloads consumed so far, if any are owed.
    fn flush_ack(&self, s: &Stream, rx: &mut RxSide) -> io::Result<()> {
        if rx.owed == 0 {
            return Ok(());
        }
        rx.owed = 0;
        s.acks_sent.fetch_add(1, Ordering::Relaxed);
        self.post_imm(s, IMM_ACK | (rx.owed_token & IMM_MASK))
    }
}

impl Drop for RdmaLink {
    fn drop(&mut self) {
        for s in &self.streams {
            let _ = self.v.modify_qp(s.qp, QpState::Error, None);
            self.v.destroy_qp(s.qp);
            let _ = self.v.dereg_mr(&s.landing.mr);
            let _ = self.v.dereg_mr(&s.tx.lock().unwrap().staging.mr);
            let rx = s.rx.lock().unwrap();
            let _ = self.v.dereg_mr(&rx.bounce.mr);
            if let Some(b) = &rx.abuf {
                let _ = self.v.dereg_mr(&b.mr);
            }
        }
        for p in std::mem::take(&mut *self.regs.parts.write().unwrap()).into_values() {
            if let PinState::Pinned(mr) = p.state {
                let _ = self.v.dereg_mr(&mr);
            }
        }
        for (_, mr) in self.regions.write().unwrap().live.drain(..) {
            let _ = self.v.dereg_mr(&mr);
        }
    }
}

pub mod gid;
#[cfg(feature = "rdma")]
pub mod ib;

#[cfg(test)]
mod tests {
    use super::super::verbs::{Fabric, FakeVerbs};
    use super::*;
    use crate::wire::{self, Header};
    use std::os::unix::net::UnixStream;

    fn pair(n: usize) -> (Fabric, Arc<RdmaLink>, Arc<RdmaLink>) {
        let (f, _, a, b) = pair_on(n, Fabric::default().nic(), SILENT_AFTER);
        (f, a, b)
    }

    /// a on `nic` (kept for the test), b on a plain NIC with `silence`.
    fn pair_on(n: usize, nic: FakeVerbs, silence: Duration) -> (Fabric, Arc<FakeVerbs>, Arc<RdmaLink>, Arc<RdmaLink>) {
        let f = nic_fabric(&nic);
        let na = Arc::new(nic);
        let (va, vb): (Arc<dyn Verbs>, Arc<dyn Verbs>) = (na.clone(), Arc::new(f.nic()));
        let (mut sa, mut sb) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || RdmaLink::connect(vb, &mut sb, n, "b".into(), &|| ()).unwrap());
        let a = RdmaLink::connect(va, &mut sa, n, "a".into(), &|| ()).unwrap();
        (f, na, Arc::new(a), Arc::new(t.join().unwrap().silent_after(silence)))
    }

    /// All of `m`, as the one part to register.
    fn whole(m: &SharedMem) -> Vec<Range<usize>> {
        std::iter::once(0..m.len()).collect()
    }

    fn nic_fabric(nic: &FakeVerbs) -> Fabric {
        nic.fabric()
    }

    /// Frame `i`: the `i`th `m` bytes of `src`, filled with `i + 1`.
    fn filled(src: &SharedMem, i: usize, m: usize) -> Frame {
        let p = unsafe { src.as_ptr().add(i * m) };
        unsafe { std::ptr::write_bytes(p, i as u8 + 1, m) };
        Frame { hdr: Header::data(i as u64, ffcore::ring::REC_FIRST, 1, m as u64, m).encode(), ptr: p, len: m }
    }

    /// Takes the next frame from stream 0 of `b`: it must be frame `i` of
    /// `m` bytes, filled with `i + 1` (see [`filled`]).
    fn take_filled(b: &RdmaLink, i: usize, m: usize) {
        let h = Header::decode(&b.recv_header(0).unwrap()).unwrap();
        assert_eq!((h.conn, h.len as usize), (i as u64, m));
        let mut got = vec![0u8; m];
        unsafe { b.recv_payload(0, got.as_mut_ptr(), m).unwrap() };
        assert!(got.iter().all(|&x| x == i as u8 + 1), "payload {i} differs");
    }

    fn data(conn: u64, payload: &[u8]) -> (Frame, [u8; HDR_LEN]) {
        let h = Header::data(conn, ffcore::ring::REC_FIRST, 1, payload.len() as u64, payload.len()).encode();
        (Frame { hdr: h, ptr: payload.as_ptr(), len: payload.len() }, h)
    }

    /// While a stream's receiver waits for frames, nobody else takes
    /// completions from its queue: a sender that drained a data immediate
    /// just before the receiver slept left a landed frame unread for the
    /// receiver's whole nap (100 ms; on the fake NIC many times a second
    /// while streaming). Senders that wait for credit or acks drain only
    /// while the receiver is busy elsewhere.
    #[test]
    fn a_waiting_receiver_is_left_its_queue() {
        let (_fab, a, b) = pair(1);
        let s = &b.streams[0];
        // Ten frames, each while the receiver waits (a thread that drains
        // in between could take the landing one first half the time).
        for round in 0..10u64 {
            let b2 = b.clone();
            let rx = std::thread::spawn(move || Header::decode(&b2.recv_header(0).unwrap()).unwrap().conn);
            let t = Instant::now();
            while !s.rx_waits.load(Ordering::Relaxed) {
                assert!(t.elapsed() < Duration::from_secs(10), "the receiver never waited");
                std::thread::yield_now();
            }
            let stop = AtomicBool::new(false);
            std::thread::scope(|sc| {
                // A sender of b's, draining as hard as it can while a frame lands.
                let drainer = sc.spawn(|| {
                    let mut took = 0;
                    while !stop.load(Ordering::Relaxed) {
                        took += b.drain_recv(s, false).unwrap() as usize;
                    }
                    took
                });
                unsafe { a.send(0, &[data(round, &[]).0]).unwrap() };
                let conn = rx.join().unwrap();
                stop.store(true, Ordering::Relaxed);
                assert_eq!(conn, round, "the receiver got the frame");
                assert_eq!(drainer.join().unwrap(), 0, "round {round}: a sender took completions from the waiting receiver's queue");
            });
        }
    }

    #[test]
    fn small_and_large_frames_cross_in_order_inline_and_by_read() {
        let (fab, a, b) = pair(2);
        // A "connection ring" on each side, registered like the engine does.
        let src = Arc::new(SharedMem::create("src", 4 << 20).unwrap());
        let dst = Arc::new(SharedMem::create("dst", 4 << 20).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        b.register(&dst, &whole(&dst)).unwrap();
        let big: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i % 251) as u8).collect();
        unsafe { std::ptr::copy_nonoverlapping(big.as_ptr(), src.as_ptr(), big.len()) };
        let small: Vec<Vec<u8>> = (0..3000).map(|i| vec![(i % 200) as u8; i % 97]).collect();
        let a2 = a.clone();
        let (src2, small2) = (src.clone(), small.clone());
        let sender = std::thread::spawn(move || {
            // Many small frames per call (they wrap the landing ring many
            // times), then big ones straight from registered memory, then
            // a big one from unregistered memory (inlined is refused).
            for chunk in small2.chunks(100) {
                let frames: Vec<Frame> = chunk.iter().map(|m| data(7, m).0).collect();
                unsafe { a2.send(1, &frames).unwrap() };
            }
            for k in 0..3 {
                let f = Frame { hdr: Header::data(8, ffcore::ring::REC_FIRST, 2, 1 << 20, 1 << 20).encode(), ptr: unsafe { src2.as_ptr().add(k << 20) }, len: 1 << 20 };
                unsafe { a2.send(1, &[f]).unwrap() };
            }
            let ping = Frame::bare(Header::control(wire::PING, 0, 0, 0).encode());
            unsafe { a2.send(1, &[ping]).unwrap() };
        });
        for m in &small {
            let h = Header::decode(&b.recv_header(1).unwrap()).unwrap();
            assert_eq!((h.ty, h.conn, h.len as usize), (wire::DATA, 7, m.len()));
            let mut got = vec![0u8; m.len()];
            unsafe { b.recv_payload(1, got.as_mut_ptr(), got.len()).unwrap() };
            assert_eq!(&got, m);
        }
        for k in 0..3usize {
            let h = Header::decode(&b.recv_header(1).unwrap()).unwrap();
            assert_eq!((h.conn, h.len), (8, 1 << 20));
            // In two pieces, like the engine at the end of a ring: one into
            // registered memory (READ in place), one through the bounce buffer.
            unsafe {
                b.recv_payload(1, dst.as_ptr(), 600_000).unwrap();
                let mut rest = vec![0u8; (1 << 20) - 600_000];
                b.recv_payload(1, rest.as_mut_ptr(), rest.len()).unwrap();
                std::ptr::copy_nonoverlapping(rest.as_ptr(), dst.as_ptr().add(600_000), rest.len());
                let got = std::slice::from_raw_parts(dst.as_ptr(), 1 << 20);
                assert!(got == &big[k << 20..(k + 1) << 20], "big frame {k}");
            }
        }
        assert_eq!(Header::decode(&b.recv_header(1).unwrap()).unwrap().ty, wire::PING);
        sender.join().unwrap();
        // Deregistration and teardown leave nothing registered.
        a.deregister(&src);
        b.deregister(&dst);
        drop((a, b));
        assert_eq!(fab.registered(), 0);
    }

    #[test]
    fn shadow_regions_are_read_in_place_while_they_live() {
        // A client's shadow region, registered on first use: a big frame
        // from one is READ by the peer's NIC straight out of it into a
        // region on the other side (no copy on either host). Once the last
        // reference to a region is gone it is never matched again (a new
        // mapping may take its addresses) and the next sweep (on PINGs)
        // deregisters it.
        let (fab, a, b) = pair(1);
        let base = fab.registered();
        let src = Arc::new(SharedMem::create("region-src", 2 << 20).unwrap());
        let dst = Arc::new(SharedMem::create("region-dst", 2 << 20).unwrap());
        assert!(a.register_region(&src) && a.register_region(&src), "registered, then known");
        assert!(b.register_region(&dst));
        assert_eq!(fab.registered(), base + 2, "one registration per region");
        let n = 1_000_003;
        let want: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
        unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), src.as_ptr().add(100), n) };
        let f = Frame { hdr: Header::data(9, ffcore::ring::REC_FIRST, 3, n as u64, n).encode(), ptr: unsafe { src.as_ptr().add(100) }, len: n };
        let ticket = unsafe { a.send_unacked(0, &[f]).unwrap() };
        let h = Header::decode(&b.recv_header(0).unwrap()).unwrap();
        assert_eq!(h.len as usize, n);
        unsafe { b.recv_payload(0, dst.as_ptr().add(64), n).unwrap() };
        assert!(a.reads_done(0, ticket, Duration::from_secs(10)).unwrap());
        let got = unsafe { std::slice::from_raw_parts(dst.as_ptr().add(64), n) };
        assert!(got == &want[..], "bytes differ");
        let (s0, d0) = (src.as_ptr() as u64 + 100, dst.as_ptr() as u64 + 64);
        let in_place: usize = fab.reads().iter().filter(|&&(rs, ld, l)| rs >= s0 && ld >= d0 && rs - s0 == ld - d0 && rs + l as u64 <= s0 + n as u64).map(|r| r.2).sum();
        assert_eq!(in_place, n, "READ from the region into the region: {:?}", fab.reads());
        // The source region goes; a new mapping (perhaps at its addresses)
        // is not registered: its bytes are copied, not READ with the old key.
        let at = src.as_ptr() as u64;
        drop(src);
        let again = Arc::new(SharedMem::create("region-again", 2 << 20).unwrap());
        let m = 100 << 10;
        unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), again.as_ptr(), m) };
        let f = Frame { hdr: Header::data(9, ffcore::ring::REC_FIRST, 4, m as u64, m).encode(), ptr: again.as_ptr(), len: m };
        assert_eq!(unsafe { a.send_unacked(0, &[f]).unwrap() }, 0, "copied (new mapping at the old addresses: {})", again.as_ptr() as u64 == at);
        Header::decode(&b.recv_header(0).unwrap()).unwrap();
        let mut back = vec![0u8; m];
        unsafe { b.recv_payload(0, back.as_mut_ptr(), m).unwrap() };
        assert!(back == want[..m]);
        a.ping(0).unwrap();
        assert_eq!(fab.registered(), base + 1, "the gone region deregistered at the next ping");
        drop(dst);
        b.ping(0).unwrap();
        assert_eq!(fab.registered(), base);
        // Nor does the link hold on to the ones that live at its end.
        let keep = Arc::new(SharedMem::create("region-keep", 1 << 20).unwrap());
        assert!(a.register_region(&keep));
        drop((a, b));
        assert_eq!(fab.registered(), 0);
    }

    #[test]
    fn frames_and_pings_do_not_wait_behind_a_sender_waiting_for_the_peers_reads() {
        let (_fab, a, b) = pair(2);
        let src = Arc::new(SharedMem::create("src", 1 << 20).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        unsafe { std::ptr::write_bytes(src.as_ptr(), 9, 1 << 20) };
        // A big payload goes by READ: its sender waits until b has read it.
        let (a2, src2) = (a.clone(), src.clone());
        let big = std::thread::spawn(move || {
            let f = Frame { hdr: Header::data(8, ffcore::ring::REC_FIRST, 2, 1 << 20, 1 << 20).encode(), ptr: src2.as_ptr(), len: 1 << 20 };
            unsafe { a2.send(0, &[f]) }
        });
        let h = Header::decode(&b.recv_header(0).unwrap()).unwrap();
        assert_eq!(h.len, 1 << 20);
        // b has not read it yet. A credit-sized frame and pings still go on
        // that stream at once, and b hears from a on the idle one.
        let t0 = Instant::now();
        let credit = Frame::bare(Header::control(wire::CREDIT, 3, 4096, 0).encode());
        unsafe { a.send(0, &[credit]).unwrap() };
        a.ping(0).unwrap();
        a.ping(1).unwrap();
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
        // b reads only after seconds (a READ stalled in the NIC's
        // retransmissions; RDMA links used to die after 3 s): a waits, the
        // link stays.
        std::thread::sleep(Duration::from_millis(3500));
        assert!(!big.is_finished(), "the big send waits for b's READ");
        // b reads: the big send completes, then the frame sent after it.
        let mut got = vec![0u8; 1 << 20];
        unsafe { b.recv_payload(0, got.as_mut_ptr(), got.len()).unwrap() };
        assert!(got.iter().all(|&x| x == 9));
        big.join().unwrap().unwrap();
        let h = Header::decode(&b.recv_header(0).unwrap()).unwrap();
        assert_eq!((h.ty, h.conn, h.arg), (wire::CREDIT, 3, 4096));
        a.deregister(&src);
    }

    #[test]
    fn streams_that_hear_nothing_stay_up_while_the_peer_pings_on_another() {
        // Only stream 1 carries pings (as if stream 0's queue pair were
        // stalled in retransmissions) for longer than b's silence limit
        // (shortened to 2 s here): the peer router is heard from, so
        // neither receiver gives up.
        let silence = Duration::from_secs(2);
        let (_fab, _, a, b) = pair_on(2, Fabric::default().nic(), silence);
        let a2 = a.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let pinger = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                a2.ping(1).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let rxs: Vec<_> = (0..2)
            .map(|s| {
                let b2 = b.clone();
                std::thread::spawn(move || b2.recv_header(s).map(|h| Header::decode(&h).unwrap().ty))
            })
            .collect();
        std::thread::sleep(silence + Duration::from_millis(700));
        assert!(rxs.iter().all(|r| !r.is_finished()), "a receiver gave up although pings arrived");
        stop.store(true, Ordering::Relaxed);
        pinger.join().unwrap();
        let ping = Frame::bare(Header::control(wire::PING, 0, 0, 0).encode());
        for s in 0..2 {
            unsafe { a.send(s, &[ping]).unwrap() };
        }
        for r in rxs {
            assert_eq!(r.join().unwrap().unwrap(), wire::PING);
        }
        // A peer router that sends nothing at all (hung, its NIC still
        // answering) is given up on after the silence limit.
        let t0 = Instant::now();
        let e = b.recv_header(0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < silence + Duration::from_secs(1));
    }

    #[test]
    fn readable_says_whether_a_frame_has_landed() {
        // The receiver asks between frames while it serves covered
        // connections: landed frames say yes, pings (immediates, not
        // frames) and an empty ring say no, a broken link says yes (so
        // that recv_header reports it).
        let (_fab, a, b) = pair(1);
        let landed = |b: &RdmaLink| (0..5000).any(|_| b.readable(0) || { std::thread::sleep(Duration::from_millis(1)); false });
        a.ping(0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!b.readable(0), "a ping is no frame");
        let payload = vec![7u8; 300];
        let (frame, hdr) = data(3, &payload);
        unsafe { a.send(0, &[frame]).unwrap() };
        assert!(landed(&b), "a frame landed and readable never said so");
        assert_eq!(b.recv_header(0).unwrap(), hdr);
        let mut got = vec![0u8; payload.len()];
        unsafe { b.recv_payload(0, got.as_mut_ptr(), got.len()).unwrap() };
        assert_eq!(got, payload);
        assert!(!b.readable(0), "nothing more landed");
        b.shutdown();
        assert!(b.readable(0));
        assert!(b.recv_header(0).is_err());
    }

    #[test]
    fn payloads_in_flight_are_read_ahead_in_order_and_acked_by_ticket() {
        // A sender keeps many big payloads in flight (send_unacked), the
        // receiver reads them ahead (many READs at once) and hands them out
        // in pieces, into registered memory and not; every byte checked,
        // and the sender learns by ticket when its bytes are free.
        let f = Fabric::default();
        let (_fab, _, a, b) = pair_on(1, f.slow_nic(Duration::from_millis(5)), SILENT_AFTER);
        let src = Arc::new(SharedMem::create("src", 8 << 20).unwrap());
        let dst = Arc::new(SharedMem::create("dst", 1 << 20).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        b.register(&dst, &whole(&dst)).unwrap();
        let sizes: Vec<usize> = (0..40).map(|i| [INLINE_MAX + 1, 100_000, 7, 300_000, AHEAD_ONE_MAX + 1][i % 5]).collect();
        let mut at = 0;
        let mut frames = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..n).map(|k| (k * 31 + i * 7) as u8).collect();
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), src.as_ptr().add(at), n) };
            frames.push((Frame { hdr: Header::data(i as u64, ffcore::ring::REC_FIRST, 1, n as u64, n).encode(), ptr: unsafe { src.as_ptr().add(at) }, len: n }, bytes));
            at += n;
        }
        let mut tickets = Vec::new();
        for chunk in frames.chunks(6) {
            let fr: Vec<Frame> = chunk.iter().map(|(f, _)| *f).collect();
            tickets.push(unsafe { a.send_unacked(0, &fr).unwrap() });
        }
        assert!(tickets.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
        assert!(!a.reads_done(0, tickets[0], Duration::ZERO).unwrap(), "nothing read yet");
        for (i, (_, want)) in frames.iter().enumerate() {
            let h = Header::decode(&b.recv_header(0).unwrap()).unwrap();
            assert_eq!((h.conn, h.len as usize), (i as u64, want.len()));
            let n = want.len();
            let mut got = vec![0u8; n];
            unsafe {
                // A piece into registered memory, the rest into private.
                let k = n / 3;
                b.recv_payload(0, dst.as_ptr(), k).unwrap();
                b.recv_payload(0, got.as_mut_ptr().add(k), n - k).unwrap();
                std::ptr::copy_nonoverlapping(dst.as_ptr(), got.as_mut_ptr(), k);
            }
            assert!(got == *want, "payload {i} of {n} bytes differs");
        }
        for t in &tickets {
            assert!(a.reads_done(0, *t, Duration::from_secs(5)).unwrap());
        }
        a.deregister(&src);
        b.deregister(&dst);
    }

    #[test]
    fn payloads_consumed_in_a_row_are_acked_together_and_a_lone_one_at_once() {
        // 32 payloads landed together: consumed in a row, they are acked a
        // few at a time (one ack says "up to here"), and the sender learns
        // of every ticket; then a lone payload (request/response) is acked
        // as soon as it is consumed, without anything behind it.
        let (_fab, a, b) = pair(1);
        const N: usize = 32;
        const M: usize = INLINE_MAX + 4096;
        let src = Arc::new(SharedMem::create("src", (N + 1) * M).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        let frames: Vec<Frame> = (0..N).map(|i| filled(&src, i, M)).collect();
        let ticket = unsafe { a.send_unacked(0, &frames).unwrap() };
        for i in 0..N {
            take_filled(&b, i, M);
        }
        assert!(a.reads_done(0, ticket, Duration::from_secs(5)).unwrap(), "the last of {N} payloads was never acked");
        let acks = b.streams[0].acks_sent.load(Ordering::Relaxed);
        assert!(acks <= (N as u64).div_ceil(ACK_EVERY as u64) + 1, "{acks} acks for {N} payloads consumed in a row");
        let lone = unsafe { a.send_unacked(0, &[filled(&src, N, M)]).unwrap() };
        take_filled(&b, N, M);
        assert!(a.reads_done(0, lone, Duration::from_secs(5)).unwrap(), "a lone payload was not acked once consumed");
        a.deregister(&src);
    }

    #[test]
    fn payloads_waiting_behind_are_read_ahead_as_deep_as_both_nics_allow() {
        // 48 payloads of 64 KiB landed at once on a link with 20 ms per
        // operation: the receiver keeps as many READs in flight as its
        // queue pair's READ depth allows (what both NICs accept, at most
        // READS_MAX; it was a fixed 16, a third of ib_read_bw's 128 at
        // 64 KiB on soft-RoCE), never more, and every byte arrives.
        for (reads, want) in [(READS_MAX, 47), (8, 8)] {
            let f = Fabric::default();
            let (fab, nb, b, a) = pair_on(1, f.slow_nic(Duration::from_millis(20)).with_reads(reads), SILENT_AFTER);
            assert_eq!(b.streams[0].reads, reads as usize);
            const N: usize = 48;
            const M: usize = 64 << 10;
            let src = Arc::new(SharedMem::create("src", N * M).unwrap());
            a.register(&src, &whole(&src)).unwrap();
            let frames: Vec<Frame> = (0..N).map(|i| filled(&src, i, M)).collect();
            let ticket = unsafe { a.send_unacked(0, &frames).unwrap() };
            for i in 0..N {
                take_filled(&b, i, M);
            }
            assert!(a.reads_done(0, ticket, Duration::from_secs(5)).unwrap());
            let peak = fab.read_peak(&nb);
            assert!(peak >= want && peak <= reads as usize, "READs in flight at once: {peak}, want {want} to {reads}");
            a.deregister(&src);
        }
    }

    #[test]
    fn small_batches_keep_many_writes_in_flight_on_a_slow_link() {
        // A sender hands the link one 64 KiB payload at a time (a pump with
        // one message per turn): each is a batch of one small record. On a
        // link with a 20 ms one-way delay, the batches must not wait for
        // each other's WRITEs (staging used to be 4 fixed slots: 4 batches
        // per round trip, a quarter of ib_read_bw at 64 KiB on soft-RoCE).
        let f = Fabric::default();
        let (fab, na, a, b) = pair_on(1, f.slow_nic(Duration::from_millis(20)), SILENT_AFTER);
        const N: usize = 40;
        const M: usize = 64 << 10;
        let src = Arc::new(SharedMem::create("src", N * M).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        let mut tickets = Vec::new();
        for i in 0..N {
            tickets.push(unsafe { a.send_unacked(0, &[filled(&src, i, M)]).unwrap() });
        }
        assert!(fab.send_peak(&na) >= N, "WRITEs in flight at once: {} of {N}", fab.send_peak(&na));
        for i in 0..N {
            take_filled(&b, i, M);
        }
        assert!(a.reads_done(0, *tickets.last().unwrap(), Duration::from_secs(5)).unwrap());
        a.deregister(&src);
    }

    #[test]
    fn a_read_outside_the_peers_grant_or_an_ack_out_of_order_fails_the_link() {
        // The sender takes its memory back before the peer read it: the
        // READ (ahead or on demand) is refused by the NIC, and the receiver
        // fails the link instead of reading anything else.
        let (_fab, a, b) = pair(1);
        let src = Arc::new(SharedMem::create("src", 1 << 20).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        let f = Frame { hdr: Header::data(1, ffcore::ring::REC_FIRST, 1, 100_000, 100_000).encode(), ptr: src.as_ptr(), len: 100_000 };
        unsafe { a.send_unacked(0, &[f, f]).unwrap() };
        a.deregister(&src);
        let e = (|| {
            Header::decode(&b.recv_header(0)?).unwrap();
            let mut got = vec![0u8; 100_000];
            unsafe { b.recv_payload(0, got.as_mut_ptr(), got.len()) }
        })()
        .unwrap_err();
        assert!(e.to_string().contains("status 10"), "{e}");
        assert!(b.recv_header(0).is_err(), "the link is down");
        // An ack for nothing sent.
        let (_fab, a, b) = pair(1);
        a.post_imm(&a.streams[0], IMM_ACK | 5).unwrap();
        let e = b.recv_header(0).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }

    #[test]
    fn a_fabric_quiet_for_seconds_does_not_take_the_peer_for_dead() {
        // As soft-RoCE retransmitting: for 4 s everything a posts (pings
        // included) arrives only 4 s later, so b hears nothing from a for
        // longer than the 3 s RDMA links used to die after. The peer lives:
        // the link stays, and the frames arrive intact and in order.
        let (_fab, nic, a, b) = pair_on(2, Fabric::default().nic(), SILENT_AFTER);
        let src = Arc::new(SharedMem::create("src", 1 << 20).unwrap());
        a.register(&src, &whole(&src)).unwrap();
        let big: Vec<u8> = (0..(100 << 10) as u32).map(|i| (i % 253) as u8).collect();
        unsafe { std::ptr::copy_nonoverlapping(big.as_ptr(), src.as_ptr(), big.len()) };
        let rxs: Vec<_> = (0..2)
            .map(|s| {
                let b2 = b.clone();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut got = Vec::new();
                    loop {
                        let h = Header::decode(&b2.recv_header(s)?).unwrap();
                        if h.ty == wire::PING {
                            return Ok::<_, io::Error>((got, t0.elapsed()));
                        }
                        let mut p = vec![0u8; h.len as usize];
                        unsafe { b2.recv_payload(s, p.as_mut_ptr(), p.len())? };
                        got.push(p);
                    }
                })
            })
            .collect();
        nic.set_delay(Duration::from_secs(4));
        let quiet = Instant::now();
        let (a2, src2) = (a.clone(), src.clone());
        let pinger = std::thread::spawn(move || {
            while quiet.elapsed() < Duration::from_millis(4500) {
                for s in 0..2 {
                    a2.ping(s).unwrap();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let sender = std::thread::spawn(move || {
            let (small, _) = data(1, b"before the quiet");
            let f = Frame { hdr: Header::data(2, ffcore::ring::REC_FIRST, 2, big.len() as u64, big.len()).encode(), ptr: src2.as_ptr(), len: big.len() };
            unsafe { a.send(0, &[small, f]).unwrap() };
            let ping = Frame::bare(Header::control(wire::PING, 0, 0, 0).encode());
            for s in 0..2 {
                unsafe { a.send(s, &[ping]).unwrap() };
            }
            (a, big)
        });
        std::thread::sleep(Duration::from_millis(4200));
        nic.set_delay(Duration::ZERO);
        pinger.join().unwrap();
        let (a, big) = sender.join().unwrap();
        let mut res: Vec<_> = rxs.into_iter().map(|r| r.join().unwrap().expect("the link stayed up")).collect();
        // The premise: b really heard nothing for 4 s.
        assert!(res[1].1 >= Duration::from_secs(4), "{:?}", res[1].1);
        let (got, _) = res.remove(0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], b"before the quiet");
        assert!(got[1] == big, "the READ payload differs");
        a.deregister(&src);
    }

    #[test]
    fn a_slow_setup_that_progresses_is_waited_for() {
        // Every queue pair and registration of b's NIC takes 250 ms: 4
        // queue pairs take b 4 s in all, a's steps are instant. a waits for
        // each of b's steps and sees them as progress.
        let f = Fabric::default();
        let va: Arc<dyn Verbs> = Arc::new(f.nic());
        let vb: Arc<dyn Verbs> = Arc::new(f.nic().with_setup_delay(Duration::from_millis(250)));
        let (mut sa, mut sb) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || RdmaLink::connect(vb, &mut sb, 4, "b".into(), &|| ()).unwrap());
        let steps = std::sync::atomic::AtomicU32::new(0);
        let a = RdmaLink::connect(va, &mut sa, 4, "a".into(), &|| {
            steps.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let b = t.join().unwrap();
        // a's 4 queue pairs made and connected, b's 4 received and ready.
        assert_eq!(steps.load(Ordering::Relaxed), 16);
        let ping = Frame::bare(Header::control(wire::PING, 0, 0, 0).encode());
        for s in 0..4 {
            unsafe { b.send(s, &[ping]).unwrap() };
            assert_eq!(Header::decode(&a.recv_header(s).unwrap()).unwrap().ty, wire::PING);
        }
    }

    #[test]
    fn a_setup_whose_peer_stalls_or_leaves_fails_clearly_and_cleans_up() {
        let f = Fabric::default();
        // The peer sends its first queue pair, then nothing (hung): given up
        // on after the step timeout, with the step named.
        let va: Arc<dyn Verbs> = Arc::new(f.nic());
        let (mut sa, mut sb) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let fb: Arc<dyn Verbs> = Arc::new(Fabric::default().nic());
            let qp = fb.create_qp(4, 4).unwrap();
            let mut info = fb.endpoint(qp).unwrap().encode().to_vec();
            info.extend_from_slice(&0x1000u64.to_le_bytes());
            info.extend_from_slice(&1u32.to_le_bytes());
            info.extend_from_slice(&(LANDING as u32).to_le_bytes());
            sb.write_all(&info).unwrap();
            std::thread::sleep(SETUP_STEP_TIMEOUT + Duration::from_secs(2));
            drop(sb);
        });
        let t0 = Instant::now();
        let e = RdmaLink::connect(va.clone(), &mut sa, 2, "a".into(), &|| ()).err().expect("a stalled peer fails the setup");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("made no step") && e.to_string().contains("queue pair 1 of 2"), "{e}");
        assert!(t0.elapsed() < SETUP_STEP_TIMEOUT + Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(f.registered(), 0, "buffers deregistered after a failed setup");
        t.join().unwrap();
        // A peer that goes away: at once, and says so.
        let (mut sa, sb) = UnixStream::pair().unwrap();
        drop(sb);
        let e = RdmaLink::connect(va, &mut sa, 1, "a".into(), &|| ()).err().expect("a peer that left fails the setup");
        assert!(matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe), "{e}");
        assert_eq!(f.registered(), 0);
    }

    #[test]
    fn a_peer_that_stops_reading_fails_the_sender_within_the_answer_timeout() {
        let (_fab, a, b) = pair(1);
        // b never reads: a runs out of landing credit and fails within the
        // answer timeout instead of blocking forever.
        let payload = vec![1u8; 8000];
        let t0 = Instant::now();
        let mut res = Ok(());
        for _ in 0..1000 {
            let (fr, _) = data(1, &payload);
            res = unsafe { a.send(0, &[fr]) };
            if res.is_err() {
                break;
            }
        }
        assert!(res.is_err(), "a sender with no credit fails");
        assert!(t0.elapsed() < ANSWER_TIMEOUT + Duration::from_secs(2), "{:?}", t0.elapsed());
        // b can still read what arrived, then learns the link is gone.
        let e = loop {
            match b.recv_header(0) {
                Ok(_) => {
                    let mut sink = vec![0u8; 8000];
                    unsafe { b.recv_payload(0, sink.as_mut_ptr(), 8000).unwrap() };
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::TimedOut), "{e}");
    }

    #[test]
    fn a_dead_host_fails_both_directions_quickly() {
        let f = Fabric::default();
        let (va, vb) = (Arc::new(f.nic()), Arc::new(f.nic()));
        let (mut sa, mut sb) = UnixStream::pair().unwrap();
        let vb2: Arc<dyn Verbs> = vb.clone();
        let t = std::thread::spawn(move || RdmaLink::connect(vb2, &mut sb, 2, "b".into(), &|| ()).unwrap());
        let a = RdmaLink::connect(va.clone(), &mut sa, 2, "a".into(), &|| ()).unwrap();
        let _b = t.join().unwrap();
        f.cut(&vb);
        let t0 = Instant::now();
        let (fr, _) = data(1, b"x");
        assert!(unsafe { a.send(0, &[fr]) }.is_err());
        assert!(a.recv_header(1).is_err());
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn setup_waits_for_a_slow_peer_whatever_timeout_the_handshake_left() {
        // Found on soft-RoCE: the accepting side's socket kept the last
        // milliseconds of its handshake timeout, and the queue pair
        // exchange failed with EAGAIN while the peer was still registering
        // its buffers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(400)); // slow to set up
            over_fake(vec![s], "dialer".into(), Duration::ZERO, Duration::ZERO, None, &|| ())
        });
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let a = over_fake(vec![s], "acceptor".into(), Duration::ZERO, Duration::ZERO, None, &|| ()).unwrap();
        let b = t.join().unwrap().unwrap();
        let ping = Frame::bare(Header::control(wire::PING, 0, 0, 0).encode());
        unsafe { b.send(0, &[ping]).unwrap() };
        assert_eq!(Header::decode(&a.recv_header(0).unwrap()).unwrap().ty, wire::PING);
    }

    #[test]
    fn setup_refuses_a_bad_landing_ring_and_cleans_up() {
        let f = Fabric::default();
        let va: Arc<dyn Verbs> = Arc::new(f.nic());
        let (mut sa, mut sb) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut junk = vec![0u8; INFO_LEN];
            junk[38..42].copy_from_slice(&100u32.to_le_bytes());
            sb.write_all(&junk).unwrap();
            let mut sink = vec![0u8; INFO_LEN];
            let _ = sb.read_exact(&mut sink);
        });
        assert!(RdmaLink::connect(va, &mut sa, 1, "a".into(), &|| ()).is_err());
        t.join().unwrap();
        assert_eq!(f.registered(), 0, "buffers deregistered after a failed setup");
    }
}
