//! A connection: tagged, ordered messages over the two rings of one shared
//! connection file. This is the data path; the router is not on it when
//! both ends are on the same host.
//!
//! Semantics (what the NCCL and UCX shims rely on):
//! - messages are delivered in order (FIFO per connection);
//! - a send may be posted before its receive: its bytes wait in the ring,
//!   and a send completes once all its bytes are in the ring (the buffer is
//!   then free again);
//! - a receive matches the next message; the message may be smaller than the
//!   buffer (the completion gives the size); a larger one fails the receive
//!   with [`Error::Truncated`] and is consumed; a tag other than the
//!   receive's (unless [`TAG_ANY`]) fails the receive and leaves the message
//!   for the next one;
//! - zero-byte messages work; up to [`MAX_INFLIGHT`] requests per connection.
//!
//! One copy for registered memory: when at least [`SHADOW_MIN`] bytes of a
//! message lie in shadow memory of the sender ([`crate::mr`]) and the peer
//! is a client on this host that reads them ([`ring::CAP_SHADOW`]), those
//! bytes are not copied into the ring: a [`ring::REC_SHADOW`] record names
//! them (region, read-only key, address, length) and the receiver copies
//! them straight from the sender's buffer into its own. Such a send
//! completes when the receiver has copied them (it counts them in its
//! `shadow_done` word), not when they are in the ring.
//!
//! Receives straight into registered memory, from another host: on a
//! connection the router forwards, a receive of at least [`SHADOW_MIN`]
//! bytes whose buffer lies in shadow memory from its first byte is posted
//! to the router ([`ring::REC_POST`]: region, read-write key, range, tag,
//! and the number of the message it expects). The router then writes that
//! message straight from the link into the buffer and puts a
//! [`ring::REC_PLACED`] record in the ring where the message would have
//! been. Messages and receives pair up in order, so a receive can name its
//! message's number when it is posted; only a receive that fails on a tag
//! (and leaves its message for the next) breaks that count. Then the
//! receives whose number may be wrong are withdrawn (`unpost_req`), and none
//! of them completes until the router says it will not write into them any
//! more (`unposted`); one the router filled before is copied aside first.
//!
//! Nothing here blocks except [`Conn::wait`], which spins briefly and then
//! sleeps on the connection's futex.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Shared;
use crate::error::{Error, Result};
use crate::liveness::Liveness;
use crate::page::Page;
use crate::polite::{self, Polite};
use crate::mr::Segment;
use crate::ring::{self, Layout, Placed, PostRef, Rx, ShadowRef, Tx, CAP_PLACE, CAP_SHADOW, REC_CONT, REC_FIRST, REC_PLACED, REC_POST, REC_SHADOW};
use crate::shm::SharedMem;

/// Liveness and wake-up for callers that sleep outside [`Conn::wait`] (in `conn/events.rs`).
mod events;
pub(crate) mod share;
pub use events::wait_any;

/// Requests (sends plus receives) that may be outstanding per connection.
pub const MAX_INFLIGHT: usize = 1024;
/// A receive with this tag matches any message.
pub const TAG_ANY: u32 = u32::MAX;
/// Fruitless polls between two checks that the peer process is alive.
const LIVENESS_EVERY: u32 = 4096;
/// How long [`Conn::wait`] spins before it sleeps: at least this, more
/// for a conversation whose messages come later ([`polite::next_window`]).
pub const SPIN: Duration = Duration::from_micros(50);
/// The longest [`Conn::wait`] spins before it sleeps.
pub const SPIN_MAX: Duration = Duration::from_micros(200);
/// For how much of [`SPIN`] it busy-spins; after that it yields the core
/// between polls (a peer thread woken on the same core then runs at once).
pub const SPIN_BUSY: Duration = Duration::from_micros(5);
/// [`Conn::wait`]'s first sleep lasts at most this (then it checks that
/// its peer lives); each further sleep of the same wait twice as long as
/// the one before, up to [`NAP_MAX`]. Events wake it at once whatever the
/// nap: the naps only bound how late a dead peer is seen. (Naps of 20 ms
/// each were most of the CPU with a thread blocked per connection: 512
/// such threads per process woke 25,000 times a second for nothing.)
pub const NAP_FIRST: Duration = Duration::from_millis(100);
/// The longest sleep of a [`Conn::wait`] (the router's pump workers nap up
/// to 1.6 s too).
pub const NAP_MAX: Duration = Duration::from_millis(1600);
/// Fewer bytes of a message in shadow memory than this go through the
/// ring anyway (the reference costs a mapping lookup and a completion
/// round trip).
pub const SHADOW_MIN: usize = 32 * 1024;

/// A request's id: valid until its completion has been returned once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Req(u64);

impl Req {
    pub fn to_raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(raw: u64) -> Req {
        Req(raw)
    }
}

enum State {
    Pending,
    Done(usize),
    Failed(Error),
}

struct SendOp {
    req: usize,
    ptr: *const u8,
    len: usize,
    tag: u32,
    sent: usize,
    started: bool,
    /// The part of the message that goes by reference, if any.
    shadow: Option<ShadowPart>,
}

/// `n` bytes from offset `at` of a message, in `seg` (held until the
/// receiver has copied them, so deregistration cannot pull them away);
/// `seq`: the number of our reference, once it is in the ring.
struct ShadowPart {
    seg: Arc<Segment>,
    at: usize,
    n: usize,
    seq: Option<u64>,
}

struct RecvOp {
    req: usize,
    ptr: *mut u8,
    cap: usize,
    tag: u32,
    /// Posted to the router for message `idx` (generation `gen`): it may
    /// write into the buffer until it has passed that message or withdrawn
    /// the post. Holds the segment, so deregistration waits.
    post: Option<Posted>,
}

struct Posted {
    idx: u64,
    gen: u64,
    _seg: Arc<Segment>,
}

enum Inbound {
    /// Between messages.
    Idle,
    /// Copying a message into a receive.
    Deliver { req: usize, ptr: *mut u8, total: usize, got: usize },
    /// Dropping the rest of a message whose receive already failed.
    Discard { left: u64 },
}

/// Request table: slots reused through a free list, generations make stale
/// ids detectable.
struct Slab {
    slots: Vec<(u32, Option<State>)>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    fn alloc(&mut self) -> Option<(usize, Req)> {
        if self.live >= MAX_INFLIGHT {
            return None;
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push((0, None));
            self.slots.len() - 1
        });
        let slot = &mut self.slots[i];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(State::Pending);
        self.live += 1;
        Some((i, Req((slot.0 as u64) << 32 | i as u64)))
    }

    fn index(&self, r: Req) -> Result<usize> {
        let i = (r.0 & 0xffff_ffff) as usize;
        match self.slots.get(i) {
            Some((gen, Some(_))) if *gen as u64 == r.0 >> 32 => Ok(i),
            _ => Err(Error::InvalidHandle(format!("request {:#x} is not outstanding on this connection", r.0))),
        }
    }

    fn set(&mut self, i: usize, s: State) {
        self.slots[i].1 = Some(s);
    }

    fn take_if_complete(&mut self, i: usize) -> Option<State> {
        if matches!(self.slots[i].1, Some(State::Pending)) {
            return None;
        }
        self.live -= 1;
        self.free.push(i);
        self.slots[i].1.take()
    }
}

/// One end of a connection.
pub struct Conn {
    id: u64,
    side: usize,
    lay: Layout,
    tx: Tx,
    rx: Rx,
    max_frag: usize,
    sends: VecDeque<SendOp>,
    /// Sends all in the ring whose reference the receiver has yet to copy:
    /// (request, length, the receiver's `shadow_done` that completes it,
    /// segment).
    awaiting: VecDeque<(usize, usize, u64, Arc<Segment>)>,
    /// [`REC_SHADOW`] records we sent, and copied out.
    shadow_sent: u64,
    shadow_done: u64,
    recvs: VecDeque<RecvOp>,
    inbound: Inbound,
    reqs: Slab,
    broken: Option<String>,
    /// Our side's liveness lock; None where /proc is unavailable.
    live: Option<Liveness>,
    /// Polls in a row that found nothing to do (liveness is checked every
    /// [`LIVENESS_EVERY`] of them).
    idle_polls: u32,
    ctx: Option<Arc<Shared>>,
    /// The client page: the router's rate-limit credit for this process.
    page: Option<Arc<Page>>,
    /// The last progress stopped because the credit ran out.
    credit_blocked: bool,
    /// Messages sent, mirrored into the control page for the router's metrics.
    msgs_sent: u64,
    /// Whether waits yield or sleep (see [`crate::polite`]).
    yields: Polite,
    /// How long the next wait spins before it sleeps (`SPIN..=SPIN_MAX`).
    spin_for: Duration,
    /// The router plays the other side (from the router's reply, not the
    /// file): only then are receives posted to it.
    pub(crate) router_is_peer: bool,
    /// Messages started in the ring (taken, or placed): the next one's number.
    next_msg: u64,
    /// Messages the router wrote straight into their posted receive.
    placed: u64,
    /// Withdrawals of our posts asked for (published in `unpost_req`).
    unposts: u64,
    /// Messages the router placed into a withdrawn receive's buffer,
    /// copied aside (by number and generation) before it was reused.
    stash: HashMap<(u64, u64), Vec<u8>>,
    /// A same-host connection's place among its process's rings (see
    /// [`share`]): how far our ring may fill.
    pub(crate) share: Option<share::Member>,
    // Last: the mapping must outlive the views above.
    _mem: SharedMem,
}

// SAFETY: the raw pointers in queued operations point into caller buffers the
// caller promised to keep valid until completion, wherever the Conn is used;
// the Layout is Send. A Conn is used by one thread at a time (&mut self).
unsafe impl Send for Conn {}

impl Conn {
    /// Wraps a mapped connection file; `side` is 0 (connector) or 1 (acceptor).
    pub(crate) fn new(
        id: u64,
        side: usize,
        mem: SharedMem,
        ring_size: usize,
        ctx: Option<Arc<Shared>>,
        page: Option<Arc<Page>>,
    ) -> Result<Conn> {
        let lay = Layout::new(&mem, ring_size)?;
        if ctx.is_some() {
            // We can map the peer's shadow memory (we talk to a router).
            lay.side(side).caps.fetch_or(CAP_SHADOW, std::sync::atomic::Ordering::Release);
        }
        let live = match Liveness::hold(mem.fd(), side) {
            Ok(l) => {
                lay.side(side).attached.store(1, std::sync::atomic::Ordering::Release);
                Some(l)
            }
            Err(e) => {
                log::debug!("connection {id}: no liveness lock ({e}); peer death is learnt from the router only");
                None
            }
        };
        Ok(Conn {
            id,
            side,
            tx: lay.tx(side),
            rx: lay.rx(side),
            lay,
            max_frag: std::env::var("FF_MAX_FRAG").ok().and_then(|s| s.parse().ok()).unwrap_or((ring_size / 4).min(64 * 1024)),
            sends: VecDeque::new(),
            awaiting: VecDeque::new(),
            shadow_sent: 0,
            shadow_done: 0,
            recvs: VecDeque::new(),
            inbound: Inbound::Idle,
            reqs: Slab { slots: Vec::new(), free: Vec::new(), live: 0 },
            broken: None,
            live,
            idle_polls: 0,
            ctx,
            page,
            credit_blocked: false,
            msgs_sent: 0,
            yields: Polite::new(1),
            spin_for: SPIN,
            router_is_peer: false,
            next_msg: 0,
            placed: 0,
            unposts: 0,
            stash: HashMap::new(),
            share: None,
            _mem: mem,
        })
    }

    /// The router's id for this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Says that we poll from `cpu` (see [`ring::current_cpu`]) and tells
    /// whether our peer (the other client, or the router's thread serving
    /// a forwarded connection) last polled from the same CPU: then spinning
    /// only keeps it from running, and the caller should yield.
    pub fn peer_polls_on(&self, cpu: u32) -> bool {
        let lay = self.lay;
        lay.side(self.side).set_cpu(cpu);
        lay.side(1 - self.side).polls_on(cpu)
    }

    /// Does the router play the other side (from the router's reply, not
    /// from the shared file's flags, which a local peer could write)?
    pub fn router_is_peer(&self) -> bool {
        self.router_is_peer
    }

    /// Is the peer on another host (the router forwards this connection)?
    /// Then answers take many microseconds and need the routers' threads:
    /// a caller that polls in a loop of its own (UCX, NCCL) should yield
    /// its core now and then while it waits. [`Conn::wait`] does.
    pub fn forwarded(&self) -> bool {
        self.lay.flags() & ring::FLAG_FORWARDED != 0
    }

    /// Posts a send of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes, and stay valid and
    /// unmodified, until the request completes or the connection is dropped.
    pub unsafe fn isend(&mut self, ptr: *const u8, len: usize, tag: u32) -> Result<Req> {
        self.check_usable()?;
        let (req, id) = self.reqs.alloc().ok_or(Error::QueueFull(MAX_INFLIGHT))?;
        let shadow = self.shadow_part(ptr, len);
        self.sends.push_back(SendOp { req, ptr, len, tag, sent: 0, started: false, shadow });
        self.progress_tx()?;
        Ok(id)
    }

    /// The part of `[ptr, ptr+len)` to send by reference, if worth it and
    /// the peer can read it.
    fn shadow_part(&self, ptr: *const u8, len: usize) -> Option<ShadowPart> {
        // The peer (a client here, or the router forwarding to another
        // host) says whether it reads references.
        if len < SHADOW_MIN || self.peer().caps.load(std::sync::atomic::Ordering::Acquire) & CAP_SHADOW == 0 {
            return None;
        }
        // Rate-limited senders pay for every byte in the ring's credit.
        if self.page.as_ref().is_some_and(|p| p.allowance() != u64::MAX) {
            return None;
        }
        let (seg, start, n) = crate::mr::find(self.ctx.as_ref()?, ptr as usize, len)?;
        (n >= SHADOW_MIN).then(|| ShadowPart { seg, at: start - ptr as usize, n, seq: None })
    }

    /// Posts a receive into `cap` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `cap` bytes, and not be accessed by
    /// the caller, until the request completes or the connection is dropped.
    pub unsafe fn irecv(&mut self, ptr: *mut u8, cap: usize, tag: u32) -> Result<Req> {
        self.check_usable()?;
        let (req, id) = self.reqs.alloc().ok_or(Error::QueueFull(MAX_INFLIGHT))?;
        let post = match self.post(ptr, cap, tag) {
            Ok(p) => p,
            Err(e) => {
                self.reqs.set(req, State::Failed(Error::Corrupt(e.to_string())));
                self.reqs.take_if_complete(req);
                self.fail_all(&e.to_string());
                return Err(e);
            }
        };
        self.recvs.push_back(RecvOp { req, ptr, cap, tag, post });
        Ok(id)
    }

    /// Posts a receive to the router, if it is worth it and can be: the
    /// router is our peer and takes posts, and the buffer lies in one shadow
    /// segment from its first byte (for at least [`SHADOW_MIN`] bytes).
    fn post(&mut self, ptr: *mut u8, cap: usize, tag: u32) -> Result<Option<Posted>> {
        let Some((seg, n)) = self.placeable(ptr, cap) else { return Ok(None) };
        // Each receive ahead of this one takes one message.
        let idx = self.next_msg + self.recvs.len() as u64;
        let r = PostRef { key: seg.remote_key(true), addr: ptr as u64, cap: n as u64, idx, gen: self.unposts };
        if !self.tx.push_record(REC_POST, tag, 0, &r.encode())? {
            return Ok(None);
        }
        self.peer().notify();
        Ok(Some(Posted { idx, gen: self.unposts, _seg: seg }))
    }

    /// The shadow segment and length a receive into `[ptr, ptr+cap)` would
    /// be posted to the router with (see [`Conn::irecv`]), if any.
    fn placeable(&self, ptr: *mut u8, cap: usize) -> Option<(Arc<Segment>, usize)> {
        if !self.router_is_peer || cap < SHADOW_MIN || self.peer().caps.load(std::sync::atomic::Ordering::Acquire) & CAP_PLACE == 0 {
            return None;
        }
        let (seg, start, n) = crate::mr::find(self.ctx.as_ref()?, ptr as usize, cap)?;
        (start == ptr as usize && n >= SHADOW_MIN).then_some((seg, n))
    }

    /// Would a receive into `[ptr, ptr+cap)` posted now be written by the
    /// router straight from the link (shadow memory, another host)? Only
    /// if it is posted before its message reaches the router: a protocol
    /// that can make the sender wait for the receive gains by it.
    pub fn places(&self, ptr: *mut u8, cap: usize) -> bool {
        self.placeable(ptr, cap).is_some()
    }

    /// How many messages the router has written straight into their posted
    /// receive (from another host, into shadow memory) so far.
    pub fn placed(&self) -> u64 {
        self.placed
    }

    /// One line of its state, for a report of a transfer that stalled:
    /// message counts, pending receives and their posts, sends, and the
    /// record at the head of the incoming ring.
    pub fn describe(&mut self) -> String {
        let recvs: Vec<String> = self
            .recvs
            .iter()
            .map(|op| match &op.post {
                Some(p) => format!("{}B posted as msg {} gen {}", op.cap, p.idx, p.gen),
                None => format!("{}B", op.cap),
            })
            .collect();
        let inbound = match self.inbound {
            Inbound::Idle => "idle".to_string(),
            Inbound::Deliver { total, got, .. } => format!("delivering {got}/{total}"),
            Inbound::Discard { left } => format!("discarding {left}"),
        };
        let head = match self.rx.peek() {
            Ok(Some(r)) => format!("kind {} tag {:#x} len {} total {}", r.kind, r.tag, r.len, r.total),
            Ok(None) => "empty".to_string(),
            Err(e) => e.to_string(),
        };
        let peer = self.peer();
        let (closed, unposted, done) = (peer.is_closed(), peer.unposted.load(std::sync::atomic::Ordering::Acquire), peer.shadow_done.load(std::sync::atomic::Ordering::Acquire));
        format!(
            "next message {} placed {} inbound {} receives [{}] sends {} by reference {} (sent {}, peer copied {}) unposts {} (peer {}) peer closed {} broken {:?} ring head: {}",
            self.next_msg,
            self.placed,
            inbound,
            recvs.join(", "),
            self.sends.len(),
            self.awaiting.len(),
            self.shadow_sent,
            done,
            self.unposts,
            unposted,
            closed,
            self.broken,
            head
        )
    }

    /// Safe send of a borrowed buffer: posts and waits until it completes.
    pub fn send(&mut self, buf: &[u8], tag: u32, timeout: Option<Duration>) -> Result<usize> {
        // SAFETY: `buf` outlives the request because we wait for it here; on
        // error or timeout the request is cancelled by breaking the connection.
        let r = unsafe { self.isend(buf.as_ptr(), buf.len(), tag)? };
        self.wait_or_break(r, timeout)
    }

    /// Safe receive into a borrowed buffer: posts and waits.
    pub fn recv(&mut self, buf: &mut [u8], tag: u32, timeout: Option<Duration>) -> Result<usize> {
        // SAFETY: as in `send`.
        let r = unsafe { self.irecv(buf.as_mut_ptr(), buf.len(), tag)? };
        self.wait_or_break(r, timeout)
    }

    fn wait_or_break(&mut self, r: Req, timeout: Option<Duration>) -> Result<usize> {
        let res = self.wait(r, timeout);
        if matches!(res, Err(Error::Timeout(_))) {
            // The borrowed buffer is about to go away: make sure no later
            // progress touches it.
            self.fail_all("request abandoned after a timeout");
        }
        res
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Corrupt(why.clone())),
            None => Ok(()),
        }
    }

    /// Completion check: `Ok(Some(size))` once done (the id is then freed),
    /// `Ok(None)` while pending, `Err` if the request failed (also freed) or
    /// the id is not outstanding.
    pub fn test(&mut self, r: Req) -> Result<Option<usize>> {
        let i = self.reqs.index(r)?;
        self.progress();
        match self.reqs.take_if_complete(i) {
            None => {
                self.idle_polls += 1;
                if self.idle_polls >= LIVENESS_EVERY {
                    self.idle_polls = 0;
                    self.check_peer_alive();
                }
                Ok(None)
            }
            Some(State::Done(n)) => Ok(Some(n)),
            Some(State::Failed(e)) => Err(e),
            Some(State::Pending) => unreachable!(),
        }
    }

    /// Waits for a request: spins for [`SPIN`], then sleeps on the futex.
    pub fn wait(&mut self, r: Req, timeout: Option<Duration>) -> Result<usize> {
        let start = Instant::now();
        let mut next_nap = NAP_FIRST;
        loop {
            let spin_start = Instant::now();
            let mut n = 0u32;
            let mut polite = false;
            loop {
                if let Some(size) = self.test(r)? {
                    self.spin_for = polite::next_window(self.spin_for, start.elapsed(), SPIN, SPIN_MAX);
                    return Ok(size);
                }
                if polite || n.is_multiple_of(64) {
                    let e = spin_start.elapsed();
                    if e > self.spin_for {
                        break;
                    }
                    // Past the first microseconds, or with our peer on this
                    // core, let whoever shares the core (a router thread
                    // about to answer) run first...
                    polite = e > SPIN_BUSY || self.peer_polls_on(ring::current_cpu());
                }
                n += 1;
                if !polite {
                    std::hint::spin_loop();
                    continue;
                }
                // ...unless yielding gives the core away for long: a busy
                // process shares it. Then sleep instead, for a while.
                if !self.yields.may_yield() || !self.yields.yield_now() {
                    break;
                }
            }
            self.yields.waited();
            let mut nap = next_nap;
            next_nap = (next_nap * 2).min(NAP_MAX);
            if let Some(t) = timeout {
                let spent = start.elapsed();
                if spent >= t {
                    return Err(Error::Timeout(t));
                }
                nap = nap.min(t - spent);
            }
            self.check_peer_alive();
            if self.credit_blocked {
                // The router tops credit up every millisecond.
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let lay = self.lay;
            let me = lay.side(self.side);
            let seen = me.prepare_sleep();
            if let Some(size) = self.test(r).inspect_err(|_| me.cancel_sleep())? {
                me.cancel_sleep();
                self.spin_for = polite::next_window(self.spin_for, start.elapsed(), SPIN, SPIN_MAX);
                return Ok(size);
            }
            me.sleep(seen, nap);
        }
    }

    /// Moves whatever can move now. Never blocks.
    pub fn progress(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let res = self.progress_tx().and_then(|_| self.progress_rx());
        if let Err(e) = res {
            let why = e.to_string();
            log::warn!("connection {}: {why}; failing its requests", self.id);
            self.broken = Some(why.clone());
            self.fail_all(&why);
        }
    }

    /// The largest `max` [`Conn::try_send_with`] accepts (a quarter of the ring).
    pub fn max_whole(&self) -> usize {
        crate::ring::whole_max(self.lay.ring_size)
    }

    /// Sends a whole message written in place: `fill` gets `max` writable
    /// bytes in the ring and returns how many it wrote. For transports that
    /// pack straight into the ring (one copy, no request to complete).
    ///
    /// `Ok(None)`, without calling `fill`, when it cannot go now: earlier
    /// [`Conn::isend`]s are still queued (order is kept), or there is no room
    /// for `max` bytes. Fails on a broken connection, a closed peer, or
    /// `max` > [`Conn::max_whole`].
    pub fn try_send_with(&mut self, tag: u32, max: usize, fill: impl FnOnce(*mut u8) -> usize) -> Result<Option<usize>> {
        self.check_usable()?;
        if self.peer().is_closed() {
            return Err(Error::PeerClosed);
        }
        if !self.sends.is_empty() {
            self.progress();
            if !self.sends.is_empty() {
                return Ok(None);
            }
        }
        if max > self.max_whole() {
            return Err(Error::InvalidArgument(format!("{max} bytes exceed the whole-message limit {}", self.max_whole())));
        }
        match self.tx.push_whole_with(tag, max, fill) {
            Ok(Some(n)) => {
                self.peer().notify();
                Ok(Some(n))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.fail_all(&e.to_string());
                Err(e)
            }
        }
    }

    /// Takes the next message in place, if it is a whole message written by
    /// [`Conn::try_send_with`] and no receive is posted or under way: calls
    /// `f(tag, payload, len)` and then releases the bytes. `Ok(false)` when
    /// there is nothing to take that way (the next message, if any, is then
    /// left for [`Conn::irecv`]). `Err(PeerClosed)` once the peer closed and
    /// everything it sent was taken. The payload is the untrusted peer's:
    /// `f` must treat it as input (it may even change under it).
    pub fn poll_whole(&mut self, f: impl FnOnce(u32, *const u8, usize)) -> Result<bool> {
        self.check_usable()?;
        if !self.recvs.is_empty() || !matches!(self.inbound, Inbound::Idle) {
            return Ok(false);
        }
        let rec = match self.rx.peek() {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                if self.peer().is_closed() && !self.rx.has_data() {
                    return Err(Error::PeerClosed);
                }
                return Ok(false);
            }
            Err(e) => {
                self.fail_all(&e.to_string());
                return Err(e);
            }
        };
        if rec.kind != REC_FIRST || rec.total != rec.len as u64 {
            return Ok(false);
        }
        f(rec.tag, self.rx.payload(), rec.len);
        self.rx.consume(rec.len);
        self.next_msg += 1;
        self.peer().notify();
        Ok(true)
    }

    /// True once the other side closed (or died).
    pub fn peer_closed(&self) -> bool {
        self.peer().is_closed()
    }

    fn fail_all(&mut self, why: &str) {
        self.withdraw_posts();
        for op in std::mem::take(&mut self.sends) {
            self.reqs.set(op.req, State::Failed(Error::Corrupt(why.to_string())));
        }
        for (req, ..) in std::mem::take(&mut self.awaiting) {
            self.reqs.set(req, State::Failed(Error::Corrupt(why.to_string())));
        }
        self.fail_recvs(|| Error::Corrupt(why.to_string()));
        self.broken.get_or_insert_with(|| why.to_string());
    }

    /// Takes every post back before the receives' buffers go back to the
    /// caller (failed, or the connection dropped): asks the router, and
    /// waits (a second at most, and not for a router that is gone) until it
    /// says it writes into none of them any more. The router finishes a
    /// message it is placing first, unless we closed our side.
    fn withdraw_posts(&mut self) {
        if !self.recvs.iter().any(|op| op.post.is_some()) {
            return;
        }
        self.unposts += 1;
        self.lay.side(self.side).unpost_req.store(self.unposts, std::sync::atomic::Ordering::Release);
        self.peer().notify();
        let start = Instant::now();
        while self.peer().unposted.load(std::sync::atomic::Ordering::Acquire) < self.unposts {
            if self.peer().is_closed() || start.elapsed() > Duration::from_secs(1) {
                log::warn!("connection {}: the router did not confirm it stopped writing into posted receives", self.id);
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        for op in &mut self.recvs {
            op.post = None;
        }
    }

    fn fail_recvs(&mut self, err: impl Fn() -> Error) {
        if let Inbound::Deliver { req, .. } = self.inbound {
            self.reqs.set(req, State::Failed(err()));
            self.inbound = Inbound::Idle;
        }
        for op in std::mem::take(&mut self.recvs) {
            self.reqs.set(op.req, State::Failed(err()));
        }
    }

    /// If the peer process died (its liveness lock is gone) while nobody
    /// told us — say the router is down — mark it closed ourselves.
    fn check_peer_alive(&mut self) {
        let peer = 1 - self.side;
        let Some(live) = &self.live else { return };
        let p = self.lay.side(peer);
        if p.attached.load(std::sync::atomic::Ordering::Acquire) != 0 && !p.is_closed() && !live.is_held(peer) {
            log::info!("connection {}: peer process is gone", self.id);
            p.close();
            self.progress();
        }
    }

    fn peer(&self) -> crate::ring::Side<'_> {
        self.lay.side(1 - self.side)
    }

    fn progress_tx(&mut self) -> Result<()> {
        self.complete_shadow_sends();
        if self.sends.is_empty() && self.awaiting.is_empty() {
            return Ok(());
        }
        if self.peer().is_closed() {
            for op in std::mem::take(&mut self.sends) {
                self.reqs.set(op.req, State::Failed(Error::PeerClosed));
            }
            for (req, ..) in std::mem::take(&mut self.awaiting) {
                self.reqs.set(req, State::Failed(Error::PeerClosed));
            }
            return Ok(());
        }
        let mut moved = false;
        self.credit_blocked = false;
        self.set_window();
        while let Some(op) = self.sends.front_mut() {
            let pending = op.shadow.as_mut().filter(|s| s.seq.is_none());
            if let Some(s) = pending.filter(|s| op.started && s.at == op.sent) {
                // The reference, in place of the part's bytes.
                let r = ShadowRef { key: s.seg.remote_key(false), addr: op.ptr as u64 + s.at as u64, n: s.n as u64 };
                if !self.tx.push_record(REC_SHADOW, op.tag, op.len as u64, &r.encode())? {
                    break;
                }
                self.shadow_sent += 1;
                s.seq = Some(self.shadow_sent);
                op.sent += s.n;
                moved = true;
                if op.sent == op.len {
                    self.sent_whole();
                }
                continue;
            }
            let left = op.len - op.sent;
            let kind = if op.started { REC_CONT } else { REC_FIRST };
            let mut max = left.min(self.max_frag);
            if let Some(s) = op.shadow.as_ref().filter(|s| s.seq.is_none()) {
                // Bytes before the reference (none: a 0-byte first record).
                max = max.min(s.at - op.sent);
            }
            let limited = match &self.page {
                Some(p) => match p.allowance() {
                    u64::MAX => None,
                    0 if max > 0 => {
                        p.set_want(true);
                        self.credit_blocked = true;
                        break;
                    }
                    a => {
                        max = max.min(a.min(usize::MAX as u64) as usize);
                        Some(p)
                    }
                },
                None => None,
            };
            // SAFETY: isend's contract keeps [ptr, ptr+len) readable.
            let pushed = unsafe { self.tx.push(kind, op.tag, op.len as u64, op.ptr.add(op.sent), max)? };
            match pushed {
                None => break,
                Some(n) => {
                    if let Some(p) = limited {
                        p.add_sent(n as u64);
                    }
                    moved = true;
                    op.sent += n;
                    op.started = true;
                    if op.sent == op.len {
                        self.sent_whole();
                    }
                }
            }
        }
        if moved {
            self.lay.msgs(self.side).store(self.msgs_sent, std::sync::atomic::Ordering::Relaxed);
            self.peer().notify();
        }
        Ok(())
    }

    /// The first send is all in the ring: it is done, or, if it sent a
    /// reference, done once the receiver has copied that.
    fn sent_whole(&mut self) {
        let Some(op) = self.sends.pop_front() else { return };
        self.msgs_sent += 1;
        match op.shadow {
            Some(ShadowPart { seg, seq: Some(seq), .. }) => self.awaiting.push_back((op.req, op.len, seq, seg)),
            _ => self.reqs.set(op.req, State::Done(op.len)),
        }
        self.complete_shadow_sends();
    }

    /// Completes sends whose referenced bytes the receiver has copied.
    fn complete_shadow_sends(&mut self) {
        if self.awaiting.is_empty() {
            return;
        }
        // Written by the peer: a lie only completes our sends early, which
        // only corrupts what that peer receives.
        let done = self.peer().shadow_done.load(std::sync::atomic::Ordering::Acquire);
        while let Some(&(req, len, seq, _)) = self.awaiting.front() {
            if done < seq {
                break;
            }
            self.awaiting.pop_front();
            self.reqs.set(req, State::Done(len));
        }
    }

    /// Copies the bytes a [`REC_SHADOW`] record names into `dst`, or skips
    /// them (`dst` None); returns how many message bytes it stands for.
    fn take_shadow(&mut self, len: usize, room: u64, dst: Option<*mut u8>) -> Result<usize> {
        if len != ShadowRef::LEN {
            return Err(Error::Corrupt(format!("shadow reference of {len} bytes")));
        }
        let mut b = [0u8; ShadowRef::LEN];
        // SAFETY: peek validated len bytes of payload; b holds them.
        unsafe { self.rx.copy_out(0, b.as_mut_ptr(), len) };
        let r = ShadowRef::decode(&b);
        if r.n > room {
            return Err(Error::Corrupt("message longer than announced".into()));
        }
        if let Some(dst) = dst {
            let ctx = self.ctx.as_ref().ok_or_else(|| Error::Corrupt("shadow reference on a connection without a router".into()))?;
            let map = crate::mr::map_remote(ctx, &r.key).map_err(|e| Error::Corrupt(format!("the peer's shadow memory: {e}")))?;
            // SAFETY: dst has room for r.n bytes (checked against the receive by the caller via `room`).
            unsafe { map.read(r.addr, dst, r.n as usize) }.map_err(|e| Error::Corrupt(format!("the peer's shadow memory: {e}")))?;
        }
        self.shadow_done += 1;
        self.lay.side(self.side).shadow_done.store(self.shadow_done, std::sync::atomic::Ordering::Release);
        Ok(r.n as usize)
    }

    /// May the front receive take the next message? Not while the router
    /// may still write a later message into its buffer (its post named a
    /// later message: a receive before it failed on a tag). Then every post
    /// is withdrawn, and once the router says so, what it wrote into this
    /// buffer meanwhile is copied aside.
    fn front_ready(&mut self) -> Result<bool> {
        let next = self.next_msg;
        let Some((idx, gen)) = self.recvs.front().and_then(|op| op.post.as_ref()).map(|p| (p.idx, p.gen)) else {
            return Ok(true);
        };
        if idx > next {
            if gen >= self.peer().unposted.load(std::sync::atomic::Ordering::Acquire) {
                if self.unposts == gen {
                    self.unposts += 1;
                    self.lay.side(self.side).unpost_req.store(self.unposts, std::sync::atomic::Ordering::Release);
                    self.peer().notify();
                }
                return Ok(false);
            }
            // Withdrawn: anything the router placed into it is in the
            // ring already (published before `unposted`).
            let b = Placed { idx, gen }.encode();
            if let Some(total) = self.rx.find_ahead(REC_PLACED, &b)? {
                let op = self.recvs.front().unwrap();
                if total > op.cap as u64 {
                    return Err(Error::Corrupt("placed message larger than its receive".into()));
                }
                // SAFETY: the buffer is ours (the receive is pending) and
                // holds at least `total` bytes.
                let v = unsafe { std::slice::from_raw_parts(op.ptr, total as usize) }.to_vec();
                self.stash.insert((idx, gen), v);
            }
        }
        self.recvs.front_mut().unwrap().post = None;
        Ok(true)
    }

    /// A message the router wrote straight into a posted receive's buffer
    /// (or, if that receive was withdrawn, copied aside): completes the
    /// front receive. Some(moved), or None to wait.
    fn take_placed(&mut self, rec: ring::Record) -> Result<Option<bool>> {
        if rec.len != Placed::LEN {
            return Err(Error::Corrupt("malformed placement record".into()));
        }
        let mut b = [0u8; Placed::LEN];
        // SAFETY: peek validated len bytes of payload; b holds them.
        unsafe { self.rx.copy_out(0, b.as_mut_ptr(), Placed::LEN) };
        let pl = Placed::decode(&b);
        let total = rec.total as usize;
        let holder = |recvs: &VecDeque<RecvOp>| recvs.iter().position(|op| op.post.as_ref().is_some_and(|p| p.idx == pl.idx && p.gen == pl.gen));
        match holder(&self.recvs) {
            Some(j) if total > self.recvs[j].cap => return Err(Error::Corrupt("placed message larger than its receive".into())),
            Some(0) => {
                // The usual case: it is the front receive's, in place.
                let op = self.recvs.pop_front().unwrap();
                if op.tag != TAG_ANY && op.tag != rec.tag {
                    return Err(Error::Corrupt("placed message with another tag".into()));
                }
                self.next_msg += 1;
                self.placed += 1;
                self.reqs.set(op.req, State::Done(total));
                self.rx.consume(rec.len);
                return Ok(Some(true));
            }
            None if !self.stash.contains_key(&(pl.idx, pl.gen)) => {
                return Err(Error::Corrupt("the router placed a message into no posted receive".into()));
            }
            _ => {}
        }
        if self.recvs.is_empty() || !self.front_ready()? {
            return Ok(None);
        }
        let op = self.recvs.front().unwrap();
        if op.tag != TAG_ANY && op.tag != rec.tag {
            let op = self.recvs.pop_front().unwrap();
            self.reqs.set(op.req, State::Failed(Error::TagMismatch { got: rec.tag, want: op.tag }));
            return Ok(Some(false));
        }
        let op = self.recvs.pop_front().unwrap();
        self.next_msg += 1;
        let stashed = self.stash.remove(&(pl.idx, pl.gen));
        let src = match (&stashed, holder(&self.recvs)) {
            (Some(v), _) => v.as_ptr(),
            (None, Some(j)) => {
                // Its post is used up: the buffer is an ordinary pending
                // receive's again.
                self.recvs[j].post = None;
                self.recvs[j].ptr as *const u8
            }
            (None, None) => unreachable!("checked above"),
        };
        if total > op.cap {
            self.reqs.set(op.req, State::Failed(Error::Truncated { msg: total as u64, buf: op.cap as u64 }));
        } else {
            let _w = crate::shadow::writing();
            // SAFETY: src holds `total` bytes (a pending receive's buffer
            // of at least that capacity, or the stash); op.ptr has room.
            unsafe { std::ptr::copy_nonoverlapping(src, op.ptr, total) };
            self.reqs.set(op.req, State::Done(total));
        }
        self.rx.consume(rec.len);
        Ok(Some(true))
    }

    fn progress_rx(&mut self) -> Result<()> {
        let mut moved = false;
        while let Some(rec) = self.rx.peek()? {
            if rec.kind == REC_POST || (rec.kind == REC_PLACED && !self.router_is_peer) {
                return Err(Error::Corrupt(format!("record of kind {} from the peer", rec.kind)));
            }
            match self.inbound {
                Inbound::Idle if rec.kind == REC_PLACED => {
                    match self.take_placed(rec)? {
                        Some(true) => moved = true,
                        Some(false) => {}
                        None => break,
                    }
                    continue;
                }
                Inbound::Idle => {
                    if rec.kind != REC_FIRST {
                        return Err(Error::Corrupt("continuation record outside a message".into()));
                    }
                    if rec.len as u64 > rec.total {
                        return Err(Error::Corrupt("record longer than its message".into()));
                    }
                    if self.recvs.is_empty() || !self.front_ready()? {
                        break;
                    }
                    let op = self.recvs.front().unwrap();
                    if op.tag != TAG_ANY && op.tag != rec.tag {
                        let op = self.recvs.pop_front().unwrap();
                        self.reqs.set(op.req, State::Failed(Error::TagMismatch { got: rec.tag, want: op.tag }));
                        continue;
                    }
                    let op = self.recvs.pop_front().unwrap();
                    self.next_msg += 1;
                    if rec.total > op.cap as u64 {
                        self.reqs.set(op.req, State::Failed(Error::Truncated { msg: rec.total, buf: op.cap as u64 }));
                        self.inbound = Inbound::Discard { left: rec.total };
                    } else {
                        self.inbound = Inbound::Deliver { req: op.req, ptr: op.ptr, total: rec.total as usize, got: 0 };
                    }
                }
                _ if rec.kind == REC_FIRST || rec.kind == REC_PLACED => {
                    return Err(Error::Corrupt("new message before the last one ended".into()))
                }
                _ => {}
            }
            if rec.kind == REC_SHADOW {
                match self.inbound {
                    Inbound::Deliver { req, ptr, total, got } => {
                        // SAFETY: got < total <= the receive's capacity.
                        let n = self.take_shadow(rec.len, (total - got) as u64, Some(unsafe { ptr.add(got) }))?;
                        let got = got + n;
                        self.inbound = if got == total {
                            self.reqs.set(req, State::Done(total));
                            Inbound::Idle
                        } else {
                            Inbound::Deliver { req, ptr, total, got }
                        };
                    }
                    Inbound::Discard { left } => {
                        let n = self.take_shadow(rec.len, left, None)? as u64;
                        self.inbound = if n == left { Inbound::Idle } else { Inbound::Discard { left: left - n } };
                    }
                    // (The match above refuses anything but FIRST between messages.)
                    Inbound::Idle => return Err(Error::Corrupt("shadow reference outside a message".into())),
                }
                self.rx.consume(rec.len);
                moved = true;
                continue;
            }
            match &mut self.inbound {
                Inbound::Deliver { req, ptr, total, got } => {
                    if rec.len > *total - *got {
                        return Err(Error::Corrupt("message longer than announced".into()));
                    }
                    let w = crate::shadow::writing();
                    // SAFETY: irecv's contract keeps [ptr, ptr+cap) writable and
                    // got + rec.len <= total <= cap; rec.len was validated by peek.
                    unsafe { self.rx.copy_out(0, ptr.add(*got), rec.len) };
                    drop(w);
                    *got += rec.len;
                    if *got == *total {
                        let (req, total) = (*req, *total);
                        self.reqs.set(req, State::Done(total));
                        self.inbound = Inbound::Idle;
                    }
                }
                Inbound::Discard { left } => {
                    if rec.len as u64 > *left {
                        return Err(Error::Corrupt("message longer than announced".into()));
                    }
                    *left -= rec.len as u64;
                    if *left == 0 {
                        self.inbound = Inbound::Idle;
                    }
                }
                Inbound::Idle => unreachable!(),
            }
            self.rx.consume(rec.len);
            moved = true;
        }
        if moved {
            self.peer().notify();
        }
        let waiting_for_data = !self.recvs.is_empty() || !matches!(self.inbound, Inbound::Idle);
        if waiting_for_data && self.peer().is_closed() && !self.rx.has_data() {
            self.fail_recvs(|| Error::PeerClosed);
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.lay.close(self.side);
        // Closed first: the router then drops a message it was writing
        // into a posted receive at once.
        self.withdraw_posts();
        if let Some(ctx) = self.ctx.take() {
            if let Err(e) = ctx.close_conn(self.id) {
                log::debug!("closing connection {}: {e}", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring;

    fn pair(ring_size: usize) -> (Conn, Conn) {
        let mem = SharedMem::create("test", ring::file_len(ring_size)).unwrap();
        ring::init(&mem, ring_size);
        let dup = |m: &SharedMem| {
            let fd = m.fd().try_clone_to_owned().unwrap();
            SharedMem::from_fd(fd, ring::file_len(ring_size)).unwrap()
        };
        let b = Conn::new(1, 1, dup(&mem), ring_size, None, None).unwrap();
        let a = Conn::new(1, 0, mem, ring_size, None, None).unwrap();
        (a, b)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    const T: Option<Duration> = Some(Duration::from_secs(20));

    /// Connections whose rings differ fill only half the smallest (see
    /// [`share`]): messages bigger than that window still arrive whole on
    /// every connection; a sender stopped by its window (its ring has room)
    /// has nothing to do until the receiver takes something, which wakes it.
    #[test]
    fn rings_of_different_sizes_stream_through_their_windows() {
        let sizes = std::sync::Arc::new(share::RingSizes::default());
        let mut pairs: Vec<(Conn, Conn)> = [512usize << 10, 256 << 10, 128 << 10]
            .into_iter()
            .map(|r| {
                let (mut a, mut b) = pair(r);
                a.share = Some(sizes.join(r));
                b.share = Some(sizes.join(r));
                (a, b)
            })
            .collect();
        // The window is 64 KiB: a 48 KiB message and part of the next fill it.
        let (a, b) = &mut pairs[0];
        let m = pattern(48 << 10, 9);
        let r1 = unsafe { a.isend(m.as_ptr(), m.len(), 1).unwrap() };
        let r2 = unsafe { a.isend(m.as_ptr(), m.len(), 2).unwrap() };
        assert!(a.test(r1).unwrap().is_some(), "the first fits the window");
        assert!(a.test(r2).unwrap().is_none(), "the second waits for the window");
        assert!(a.tx_free() > 256 << 10, "although the ring has room");
        assert!(!a.has_events(), "a full window is nothing to do");
        let words = a.wake_words().unwrap();
        let mut w = crate::wake::Waiter::new().unwrap();
        w.arm(vec![words.arm()]).unwrap();
        let mut got = vec![0u8; m.len()];
        assert_eq!(b.recv(&mut got, 1, T).unwrap(), m.len());
        assert_eq!(got, m);
        let mut p = libc::pollfd { fd: w.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on our stack.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "the receiver's taking woke the sender");
        assert!(a.has_events());
        assert_eq!(a.wait(r2, T).unwrap(), m.len());
        assert_eq!(b.recv(&mut got, 2, T).unwrap(), m.len());
        assert_eq!(got, m);
        // All three at once, each from its own threads, messages of 300 KiB.
        std::thread::scope(|s| {
            for (k, (a, b)) in pairs.iter_mut().enumerate() {
                s.spawn(move || {
                    for i in 0..12u8 {
                        a.send(&pattern(300 << 10, i ^ k as u8), 7, T).unwrap();
                    }
                });
                s.spawn(move || {
                    let mut got = vec![0u8; 300 << 10];
                    for i in 0..12u8 {
                        assert_eq!(b.recv(&mut got, 7, T).unwrap(), got.len());
                        assert!(got == pattern(300 << 10, i ^ k as u8), "connection {k}, message {i}");
                    }
                });
            }
        });
    }

    #[test]
    fn sizes_and_order_through_a_small_ring() {
        let (mut a, mut b) = pair(4096);
        let sizes = [0usize, 1, 31, 32, 33, 63, 64, 4000, 4096, 10_000, 100_000];
        let t = std::thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                a.send(&pattern(n, i as u8), 5, T).unwrap();
            }
            a
        });
        for (i, &n) in sizes.iter().enumerate() {
            let mut buf = vec![0u8; n + 100];
            assert_eq!(b.recv(&mut buf, 5, T).unwrap(), n);
            assert_eq!(&buf[..n], &pattern(n, i as u8)[..], "message {i}");
        }
        t.join().unwrap();
    }

    /// This thread's voluntary context switches so far (its sleeps).
    fn sleeps_so_far() -> i64 {
        // SAFETY: rusage is plain old data; getrusage only writes into it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        ru.ru_nvcsw
    }

    #[test]
    fn a_long_wait_sleeps_ever_longer_naps_and_still_gets_its_message() {
        let (mut a, mut b) = pair(1 << 16);
        let mut buf = vec![0u8; 100];
        let r = unsafe { b.irecv(buf.as_mut_ptr(), buf.len(), 3).unwrap() };
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1600));
            a.send(&pattern(77, 4), 3, T).unwrap();
            a
        });
        let before = sleeps_so_far();
        assert_eq!(b.wait(r, T).unwrap(), 77);
        let slept = sleeps_so_far() - before;
        assert_eq!(&buf[..77], &pattern(77, 4)[..]);
        // Naps of 100, 200, 400 and 800 ms (then the message): a handful of
        // sleeps, where naps of 20 ms each took 80.
        assert!(slept <= 12, "{slept} sleeps in one wait of 1.6 s");
        t.join().unwrap();
    }

    #[test]
    fn send_before_receive_and_many_in_flight() {
        let (mut a, mut b) = pair(1 << 20);
        let msgs: Vec<Vec<u8>> = (0..32).map(|i| pattern(1000 + i, i as u8)).collect();
        let sends: Vec<Req> = msgs.iter().map(|m| unsafe { a.isend(m.as_ptr(), m.len(), 1).unwrap() }).collect();
        let mut bufs = vec![vec![0u8; 2000]; 32];
        let recvs: Vec<Req> = bufs.iter_mut().map(|m| unsafe { b.irecv(m.as_mut_ptr(), m.len(), 1).unwrap() }).collect();
        for (i, r) in recvs.into_iter().enumerate() {
            assert_eq!(b.wait(r, T).unwrap(), 1000 + i);
        }
        for (i, s) in sends.into_iter().enumerate() {
            assert_eq!(a.wait(s, T).unwrap(), 1000 + i);
        }
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(&bufs[i][..m.len()], &m[..]);
        }
    }

    #[test]
    fn truncation_and_tag_mismatch_are_errors_without_losing_the_stream() {
        let (mut a, mut b) = pair(4096);
        a.send(&pattern(100, 1), 9, T).unwrap();
        a.send(&pattern(10, 2), 9, T).unwrap();
        a.send(&pattern(10, 3), 4, T).unwrap();
        let mut small = [0u8; 50];
        assert!(matches!(b.recv(&mut small, 9, T), Err(Error::Truncated { msg: 100, buf: 50 })));
        let mut buf = [0u8; 50];
        assert_eq!(b.recv(&mut buf, 9, T).unwrap(), 10, "the next message is intact");
        assert_eq!(&buf[..10], &pattern(10, 2)[..]);
        assert!(matches!(b.recv(&mut buf, 9, T), Err(Error::TagMismatch { got: 4, want: 9 })));
        assert_eq!(b.recv(&mut buf, TAG_ANY, T).unwrap(), 10, "a mismatched message stays queued");
        assert_eq!(&buf[..10], &pattern(10, 3)[..]);
    }

    #[test]
    fn bad_request_ids_are_refused() {
        let (mut a, _b) = pair(4096);
        assert!(matches!(a.test(Req(12345)), Err(Error::InvalidHandle(_))));
        let r = a.send(&[1, 2, 3], 0, T);
        assert_eq!(r.unwrap(), 3);
        let m = [0u8; 4];
        let id = unsafe { a.isend(m.as_ptr(), 4, 0).unwrap() };
        assert_eq!(a.wait(id, T).unwrap(), 4);
        assert!(matches!(a.test(id), Err(Error::InvalidHandle(_))), "a completed id is stale");
    }

    #[test]
    fn peer_close_fails_pending_requests() {
        let (mut a, b) = pair(4096);
        let mut buf = [0u8; 8];
        let r = unsafe { a.irecv(buf.as_mut_ptr(), 8, 0).unwrap() };
        drop(b);
        assert!(matches!(a.wait(r, T), Err(Error::PeerClosed)));
        assert!(matches!(a.send(&[0u8; 100_000], 0, T), Err(Error::PeerClosed)));
    }

    #[test]
    fn data_sent_before_close_is_still_delivered() {
        let (mut a, mut b) = pair(4096);
        a.send(&pattern(500, 7), 0, T).unwrap();
        drop(a);
        let mut buf = [0u8; 500];
        assert_eq!(b.recv(&mut buf, 0, T).unwrap(), 500);
        assert_eq!(&buf[..], &pattern(500, 7)[..]);
        assert!(matches!(b.recv(&mut buf, 0, T), Err(Error::PeerClosed)));
    }

    #[test]
    fn corrupted_ring_is_detected_not_trusted() {
        let (mut a, mut b) = pair(4096);
        a.send(&[1u8; 10], 0, T).unwrap();
        // A hostile peer rewrites the record header: length far beyond the ring.
        unsafe {
            let p = b._mem.as_ptr().add(ring::CTRL_LEN) as *mut u64;
            p.add(2).write(1 << 40);
        }
        let mut buf = [0u8; 10];
        assert!(matches!(b.recv(&mut buf, 0, T), Err(Error::Corrupt(_))));
        assert!(matches!(unsafe { b.irecv(buf.as_mut_ptr(), 10, 0) }, Err(Error::Corrupt(_))), "the connection stays broken");
        // A hostile consumer moves the tail past the head.
        let (mut a, b) = pair(4096);
        unsafe {
            let tail = b._mem.as_ptr().add(256 + 64) as *mut u64;
            tail.write(1 << 30);
        }
        let big = vec![0u8; 8192];
        assert!(matches!(a.send(&big, 0, T), Err(Error::Corrupt(_))));
    }

    #[test]
    fn whole_messages_in_place_keep_order_with_isend() {
        let (mut a, mut b) = pair(4096);
        let put = |c: &mut Conn, tag: u32, data: &[u8]| {
            c.try_send_with(tag, data.len(), |p| {
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
                data.len()
            })
        };
        assert_eq!(put(&mut a, 7, b"hello").unwrap(), Some(5));
        let mut got = Vec::new();
        assert!(b.poll_whole(|t, p, n| got.push((t, unsafe { std::slice::from_raw_parts(p, n) }.to_vec()))).unwrap());
        assert_eq!(got, vec![(7, b"hello".to_vec())]);
        assert!(!b.poll_whole(|_, _, _| unreachable!()).unwrap(), "nothing left");
        // A queued isend (larger than the ring) holds whole messages back.
        let big = pattern(10_000, 3);
        let r = unsafe { a.isend(big.as_ptr(), big.len(), 1).unwrap() };
        assert_eq!(put(&mut a, 8, b"x").unwrap(), None, "order: isend first");
        assert!(!b.poll_whole(|_, _, _| unreachable!()).unwrap(), "a multi-record message is left for irecv");
        let mut buf = vec![0u8; 10_000];
        let rr = unsafe { b.irecv(buf.as_mut_ptr(), buf.len(), 1).unwrap() };
        loop {
            a.progress();
            if let Some(n) = b.test(rr).unwrap() {
                assert_eq!(n, 10_000);
                break;
            }
        }
        assert_eq!(a.wait(r, T).unwrap(), 10_000);
        assert!(buf == big);
        assert_eq!(put(&mut a, 8, b"x").unwrap(), Some(1));
        assert!(b.poll_whole(|t, _, n| assert_eq!((t, n), (8, 1))).unwrap());
        // Full ring: None without calling fill, then room again.
        let mut sent = 0;
        while put(&mut a, 9, &[1u8; 900]).unwrap().is_some() {
            sent += 1;
        }
        assert!(sent >= 3);
        assert!(a.try_send_with(9, 900, |_| panic!("fill called without room")).unwrap().is_none());
        for _ in 0..sent {
            assert!(b.poll_whole(|t, _, n| assert_eq!((t, n), (9, 900))).unwrap());
        }
        assert!(put(&mut a, 9, &[1u8; 900]).unwrap().is_some());
        assert!(matches!(a.try_send_with(9, 4096, |_| 0), Err(Error::InvalidArgument(_))));
        drop(a);
        assert!(b.poll_whole(|_, _, _| {}).unwrap());
        assert!(matches!(b.poll_whole(|_, _, _| {}), Err(Error::PeerClosed)));
        assert!(b.peer_closed());
    }

    #[test]
    fn whole_messages_wrap_around_the_ring() {
        // Whatever the offset, a drained ring takes a whole message (the
        // producer must re-read the consumer's tail, padding included).
        let (mut a, mut b) = pair(4096);
        for i in 0..500usize {
            let len = [900usize, 1, 700, 64, 333][i % 5];
            let n = a.try_send_with(3, len, |p| {
                unsafe { std::ptr::write_bytes(p, i as u8, len) };
                len
            });
            assert_eq!(n.unwrap(), Some(len), "message {i} of {len} bytes into a drained ring");
            let mut seen = 0;
            assert!(b.poll_whole(|_, p, n| {
                seen = n;
                assert!(unsafe { std::slice::from_raw_parts(p, n) }.iter().all(|&x| x == i as u8));
            }).unwrap());
            assert_eq!(seen, len);
        }
    }

    #[test]
    fn queue_limit_is_enforced() {
        let (mut a, _b) = pair(4096);
        let mut buf = [0u8; 1];
        for _ in 0..MAX_INFLIGHT {
            unsafe { a.irecv(buf.as_mut_ptr(), 1, 0).unwrap() };
        }
        assert!(matches!(unsafe { a.irecv(buf.as_mut_ptr(), 1, 0) }, Err(Error::QueueFull(_))));
    }

    #[test]
    fn large_message_through_small_ring_with_threads() {
        let (mut a, mut b) = pair(64 * 1024);
        let n = 8 << 20;
        let data = pattern(n, 42);
        let expect = data.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..3 {
                a.send(&data, 0, T).unwrap();
            }
        });
        let mut buf = vec![0u8; n];
        for _ in 0..3 {
            assert_eq!(b.recv(&mut buf, 0, T).unwrap(), n);
            assert!(buf == expect);
            buf.fill(0);
        }
        t.join().unwrap();
    }
}
