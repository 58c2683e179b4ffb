//! RC queue pairs. A connected pair of queue pairs is one ffcore connection
//! through the router (the same rings, shadow memory and links between
//! hosts as the NCCL and UCX faces); the side whose (GID, QPN) is smaller
//! connects to the other's device listener (the GID names it, see
//! [`crate::wire::Gid`]) and says which queue pair it wants (`HELLO`).
//!
//! Requests go out in order and are answered in order ([`crate::wire`]):
//! a work request completes when its answer is back and its bytes have
//! left its buffer. The responder checks every request against its own
//! registrations (key, protection domain, bounds, access flags) before it
//! touches memory; a refused request completes at the requester with the
//! status a NIC gives (`IBV_WC_REM_ACCESS_ERR`, ...) and its queue pair
//! goes to the error state, flushing everything else
//! (`IBV_WC_WR_FLUSH_ERR`). A peer that closes or dies (its router says
//! so) fails the work in flight with `IBV_WC_RETRY_EXC_ERR` once the queue
//! pair's retries would have run out, as a NIC's; with none, receives stay
//! posted for a while first ([`Qp::peer_gone`]).

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ffcore::wake::{ConnWords, WakeWord};
use ffcore::{AtomicOp, Conn, Handle, RemoteKey, RemoteMap, Req, Width};
use std::collections::HashSet;

use crate::dev::{Channel, Cq, Device, Port, Status};
use crate::srq::Srq;
use crate::ud::{self, UdQp};
use crate::sys::*;
use crate::wire::{self, Gid, Hdr, Hello, F_DATA_NEXT, F_IMM};

/// Payloads up to this size travel with their header (one message).
pub const INLINE_MAX: usize = 8192;
/// The largest inline send we accept (`max_inline_data`).
pub const MAX_INLINE_DATA: u32 = 1024;
pub const MAX_SGE: u32 = 16;
pub const MAX_WR: u32 = 8192;
/// A queue pair that has no connection this long after RTR fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long receives stay posted after the peer went away while nothing
/// was under way (see [`Qp::peer_gone`]).
const GONE_GRACE: Duration = Duration::from_secs(2);
/// Bounds on the retry time of a queue pair whose peer went with requests
/// under way (see [`Qp::retry_time`]).
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(8);
/// Answers queued (not yet in the ring) before we stop taking requests.
const MAX_OUT: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

/// A scatter/gather list: one or two elements need no allocation.
pub type Sges = smallvec::SmallVec<[Sge; 2]>;
/// An inline send's bytes, copied when posted.
pub type InlineData = smallvec::SmallVec<[u8; 64]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Send,
    Write,
    Read,
    /// 64-bit fetch-and-add (`add`) or compare-and-swap (`compare`, `swap`).
    FetchAdd { add: u64 },
    CmpSwap { compare: u64, swap: u64 },
}

impl Op {
    /// Answered with data (READ_RESP) rather than by an ACK; the local
    /// elements receive it.
    pub fn fetches(self) -> bool {
        !matches!(self, Op::Send | Op::Write)
    }
    fn atomic(self) -> Option<(AtomicOp, u64, u64)> {
        match self {
            Op::FetchAdd { add } => Some((AtomicOp::Add, add, 0)),
            Op::CmpSwap { compare, swap } => Some((AtomicOp::Cswap, swap, compare)),
            _ => None,
        }
    }
}

pub struct SendWr {
    pub wr_id: u64,
    pub op: Op,
    pub signaled: bool,
    pub sges: Sges,
    /// `IBV_SEND_INLINE`: the bytes, copied when posted.
    pub inline: Option<InlineData>,
    pub imm: Option<u32>,
    pub raddr: u64,
    pub rkey: u32,
    pub len: u64,
}

pub struct RecvWr {
    pub wr_id: u64,
    pub sges: Sges,
}

struct Inflight {
    seq: u64,
    wr_id: u64,
    op: Op,
    signaled: bool,
    len: u64,
    /// The answer: 0 or the completion status.
    answered: Option<Status>,
    /// Our bytes still leaving (a DATA message from the buffer).
    data: Option<Req>,
    _bounce: Option<Vec<u8>>,
    /// Where a READ's bytes go.
    dst: Sges,
}

enum Link {
    Idle,
    Connect { handle: Handle, since: Instant, next_try: Instant },
    Accept { since: Instant },
    Up(Box<Conn>),
    /// The peer's queue pair went away (closed, or its process died): the
    /// queue pair fails at `until` unless it is destroyed first (see
    /// [`Qp::peer_gone`]).
    Gone { until: Instant },
}

/// What a DATA message that is being received completes.
enum After {
    Recv { wr_id: u64, seq: u64, imm: Option<u32>, bounce: Option<(Vec<u8>, Sges)> },
    Write { seq: u64, imm: Option<u32>, len: u64 },
    ReadResp { seq: u64, bounce: Option<(Vec<u8>, Sges)> },
    Discard,
    /// A request received into our own buffer, to be served in its turn.
    Hold { tag: u32, hdr: Hdr },
}

enum Inbound {
    Idle,
    Data { req: Req, after: After, _buf: Option<Vec<u8>> },
}

/// A request that waits for its turn: one that needs a receive when none
/// is posted (it waits, as with an infinite RNR retry count), and every
/// request after it. Its bytes are copied out of the ring, so the answers
/// behind it (ACKs, READ data) still get through.
struct Held {
    tag: u32,
    hdr: Hdr,
    data: Vec<u8>,
    /// The bytes are placed already (a WRITE with immediate).
    placed: bool,
}

/// Bytes of held requests before we stop reading the ring (each request
/// counts [`HELD_ENTRY`] more than its data, so that a peer cannot queue
/// zero-byte SENDs without bound either).
const HELD_MAX: usize = 64 << 20;
const HELD_ENTRY: usize = 128;
/// Most keys a peer may announce for direct access on one queue pair (one
/// per registration it answered for; a peer announcing more is not given
/// more memory: later announcements are ignored and those requests go as
/// messages).
const DIRECT_MAX: usize = 4096;

#[derive(Clone, Copy)]
enum Reply {
    Ack { seq: u64, status: Status },
    Read { seq: u64, ptr: u64, len: u64, status: Status },
    Rkey { hdr: Hdr, key: RemoteKey },
    /// An atomic's answer: the old value.
    Value { seq: u64, value: u64, status: Status },
}

/// A peer's registration mapped here (same host): WRITEs and READs under
/// its key are done directly (see [`crate::wire`]).
struct Direct {
    addr: u64,
    len: u64,
    access: u32,
    map: Arc<RemoteMap>,
}

impl Direct {
    /// Is `[addr, addr+len)` inside the range the peer announced? (The
    /// peer's values are its own, and so are the application's: checked
    /// without overflow.)
    fn holds(&self, addr: u64, len: u64) -> bool {
        crate::dev::range_holds(self.addr, self.len, addr, len)
    }
}

/// What handling a header asks of the connection next.
enum Next {
    Nothing,
    Recv { ptr: *mut u8, len: usize, after: After, buf: Option<Vec<u8>> },
    Broken(String),
}

impl Next {
    /// Drops the DATA message that follows, whatever its length (the
    /// peer's), without a buffer for it: received into no room, it is
    /// consumed as truncated.
    fn discard() -> Next {
        Next::Recv { ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len: 0, after: After::Discard, buf: None }
    }
}

pub struct Qp {
    pub qpn: u32,
    pub state: u32,
    pub pd: usize,
    pub send_cq: Arc<Cq>,
    pub recv_cq: Arc<Cq>,
    pub sig_all: bool,
    pub access: u32,
    pub cap: ibv_qp_cap,
    pub remote: Option<([u8; 16], u32)>,
    pub attr: ibv_qp_attr,
    link: Link,
    words: Option<Arc<ConnWords>>,
    sq: VecDeque<SendWr>,
    inflight: VecDeque<Inflight>,
    next_seq: u64,
    rq: VecDeque<RecvWr>,
    /// Receives come from this shared receive queue instead of `rq`.
    pub srq: Option<Arc<Srq>>,
    /// `srq` is this queue pair's own receive queue, shared with its
    /// loopback twin (see [`Engine::loopback`]), not the application's.
    pub internal_srq: bool,
    /// The QP number receive completions carry (a twin's: its owner's).
    pub recv_qpn: u32,
    /// A queue pair connected to itself: the twin that serves its requests.
    pub twin: Option<u32>,
    inbound: Inbound,
    held: VecDeque<Held>,
    held_bytes: usize,
    /// Receive completions whose ACK is not in the ring yet: the
    /// application sees them only after it is (a process that exits as
    /// soon as it has its receive must not take the sender's ACK along).
    recv_wcs: Vec<ibv_wc>,
    out: VecDeque<Reply>,
    resp_reqs: Vec<Req>,
    expect_seq: u64,
    /// The peer is a process on this host (not the router).
    local_peer: bool,
    /// Our keys the peer was told about (`RKEY`).
    announced: HashSet<u32>,
    /// The peer's keys we reach directly.
    direct: HashMap<u32, Direct>,
}

/// Copies `data` into the scatter list; false if it does not fit. Holds
/// [`ffcore::shadow::writing`] (so, as every write into application
/// memory here, it must not be called with it held).
///
/// # Safety
/// Every element was checked against a registration (or lies in a buffer
/// of ours) and is valid for writes; `data` is valid for reads of `len`.
unsafe fn scatter(sges: &[Sge], data: *const u8, len: usize) -> bool {
    if sges.iter().map(|s| s.len as usize).sum::<usize>() < len {
        return false;
    }
    let _w = ffcore::shadow::writing();
    let mut off = 0;
    for s in sges {
        if off == len {
            break;
        }
        let n = (s.len as usize).min(len - off);
        std::ptr::copy_nonoverlapping(data.add(off), s.addr as *mut u8, n);
        off += n;
    }
    true
}

/// Copies the gather list (or the inline copy) to `dst`.
///
/// # Safety
/// The elements were checked against registrations when posted; `dst` is
/// valid for writes of the work request's length.
unsafe fn gather(wr: &SendWr, dst: *mut u8) {
    if let Some(b) = &wr.inline {
        std::ptr::copy_nonoverlapping(b.as_ptr(), dst, b.len());
        return;
    }
    let mut off = 0;
    for s in &wr.sges {
        std::ptr::copy_nonoverlapping(s.addr as *const u8, dst.add(off), s.len as usize);
        off += s.len as usize;
    }
}

fn wc(wr_id: u64, status: Status, opcode: u32, len: u64, qpn: u32) -> ibv_wc {
    let mut w = ibv_wc { wr_id, status, opcode, byte_len: len as u32, qp_num: qpn, ..Default::default() };
    w.vendor_err = 0;
    w
}

impl Qp {
    pub fn new(qpn: u32, pd: usize, send_cq: Arc<Cq>, recv_cq: Arc<Cq>, srq: Option<Arc<Srq>>, sig_all: bool, cap: ibv_qp_cap) -> Qp {
        Qp {
            qpn,
            state: IBV_QPS_RESET,
            pd,
            send_cq,
            recv_cq,
            sig_all,
            access: 0,
            cap,
            remote: None,
            attr: ibv_qp_attr::default(),
            link: Link::Idle,
            words: None,
            sq: VecDeque::new(),
            inflight: VecDeque::new(),
            next_seq: 0,
            rq: VecDeque::new(),
            srq,
            internal_srq: false,
            recv_qpn: qpn,
            twin: None,
            inbound: Inbound::Idle,
            held: VecDeque::new(),
            held_bytes: 0,
            recv_wcs: Vec::new(),
            out: VecDeque::new(),
            resp_reqs: Vec::new(),
            expect_seq: 0,
            local_peer: false,
            announced: HashSet::new(),
            direct: HashMap::new(),
        }
    }

    pub fn send_queue_len(&self) -> usize {
        self.sq.len() + self.inflight.len()
    }
    pub fn recv_queue_len(&self) -> usize {
        match &self.srq {
            Some(s) if self.internal_srq => s.state.lock().unwrap().rq.len(),
            _ => self.rq.len(),
        }
    }

    /// A receive is posted (on the SRQ, for a queue pair that has one).
    fn has_recv(&self) -> bool {
        match &self.srq {
            Some(s) => !s.is_empty(),
            None => !self.rq.is_empty(),
        }
    }

    /// The next receive, from the SRQ for a queue pair that has one.
    fn take_recv(&mut self, dev: &Device) -> Option<RecvWr> {
        match &self.srq {
            Some(s) => s.take(dev),
            None => self.rq.pop_front(),
        }
    }

    pub fn post_send(&mut self, dev: &Device, wr: SendWr) {
        if self.state == IBV_QPS_ERR {
            self.send_cq.push(wc(wr.wr_id, IBV_WC_WR_FLUSH_ERR, send_opcode(wr.op), 0, self.qpn));
            return;
        }
        if wr.inline.is_none() {
            for s in &wr.sges {
                if dev.check_local(self.pd, s.lkey, s.addr, s.len as u64, wr.op.fetches()).is_err() {
                    self.send_cq.push(wc(wr.wr_id, IBV_WC_LOC_PROT_ERR, send_opcode(wr.op), 0, self.qpn));
                    self.fail(dev, IBV_WC_WR_FLUSH_ERR);
                    return;
                }
            }
        }
        self.sq.push_back(wr);
    }

    pub fn post_recv(&mut self, dev: &Device, wr: RecvWr) {
        if self.state == IBV_QPS_ERR {
            self.recv_cq.push(wc(wr.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, self.qpn));
            return;
        }
        for s in &wr.sges {
            if dev.check_local(self.pd, s.lkey, s.addr, s.len as u64, true).is_err() {
                self.recv_cq.push(wc(wr.wr_id, IBV_WC_LOC_PROT_ERR, IBV_WC_RECV, 0, self.qpn));
                self.fail(dev, IBV_WC_WR_FLUSH_ERR);
                return;
            }
        }
        match &self.srq {
            // Checked above; the length against max_recv_wr by the caller.
            Some(s) if self.internal_srq => s.state.lock().unwrap().rq.push_back(wr),
            _ => self.rq.push_back(wr),
        }
    }

    /// RTR: the peer is known; connect to it, or wait for it.
    pub fn to_rtr(&mut self, dev: &Device, gid: [u8; 16], qpn: u32) -> Result<(), i32> {
        if (gid, qpn) == (dev.port.gid, self.qpn) {
            return Err(libc::EINVAL);
        }
        self.remote = Some((gid, qpn));
        self.link = if (dev.port.gid, self.qpn) < (gid, qpn) {
            let now = Instant::now();
            Link::Connect { handle: handle_for(dev, &gid), since: now, next_try: now }
        } else {
            Link::Accept { since: Instant::now() }
        };
        Ok(())
    }

    pub fn waiting_for(&self, src_qpn: u32) -> bool {
        matches!(self.link, Link::Accept { .. }) && self.remote.is_some_and(|(_, q)| q == src_qpn)
    }

    pub fn attach(&mut self, conn: Conn) {
        self.words = conn.wake_words().ok();
        self.local_peer = !conn.forwarded() && std::env::var("FFVERBS_DIRECT").map_or(true, |v| v != "n");
        self.link = Link::Up(Box::new(conn));
    }

    /// Back to RESET: everything dropped, nothing completed.
    pub fn reset(&mut self) {
        let srq = if self.internal_srq { None } else { self.srq.clone() };
        let fresh = Qp::new(self.qpn, self.pd, self.send_cq.clone(), self.recv_cq.clone(), srq, self.sig_all, self.cap);
        *self = fresh;
    }

    /// The error state: the request at the front fails with `first`,
    /// everything else is flushed, and the connection is closed (the peer
    /// learns it at once).
    pub fn fail(&mut self, _dev: &Device, first: Status) {
        if self.state == IBV_QPS_ERR {
            return;
        }
        self.state = IBV_QPS_ERR;
        for w in self.recv_wcs.drain(..) {
            self.recv_cq.push(w);
        }
        let mut status = first;
        for f in self.inflight.drain(..) {
            // Requests the peer answered before it went are done (their
            // answers were read before we noticed it had gone).
            if f.answered == Some(0) && status == first {
                if f.signaled {
                    self.send_cq.push(wc(f.wr_id, IBV_WC_SUCCESS, send_opcode(f.op), f.len, self.qpn));
                }
                continue;
            }
            self.send_cq.push(wc(f.wr_id, status, send_opcode(f.op), 0, self.qpn));
            status = IBV_WC_WR_FLUSH_ERR;
        }
        for w in self.sq.drain(..) {
            self.send_cq.push(wc(w.wr_id, status, send_opcode(w.op), 0, self.qpn));
            status = IBV_WC_WR_FLUSH_ERR;
        }
        // An SRQ's receives are not this queue pair's: they stay posted
        // (unless it is the queue pair's own, shared with its twin).
        let own: Vec<RecvWr> = match &self.srq {
            Some(s) if self.internal_srq => s.state.lock().unwrap().rq.drain(..).collect(),
            _ => self.rq.drain(..).collect(),
        };
        for r in own {
            self.recv_cq.push(wc(r.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, self.qpn));
        }
        self.held.clear();
        self.held_bytes = 0;
        self.out.clear();
        self.resp_reqs.clear();
        self.inbound = Inbound::Idle;
        self.words = None;
        self.link = Link::Idle;
    }

    /// Has the connection anything for us (after [`ConnWords::arm`])? A
    /// connect under way is retried on the service thread's timeout.
    pub fn has_events(&mut self) -> bool {
        match &mut self.link {
            Link::Up(c) => c.has_events(),
            _ => false,
        }
    }

    pub fn arm(&self) -> Option<WakeWord> {
        self.words.as_ref().map(|w| w.arm())
    }

    /// Checks that the peer still lives (one system call).
    pub fn check_alive(&mut self, dev: &Device) {
        let gone = match &mut self.link {
            Link::Up(c) => !c.check_alive() && !c.has_events(),
            _ => false,
        };
        if gone {
            self.peer_gone(dev);
        }
    }

    /// The peer's queue pair went away. A NIC's queue pair learns of it
    /// only by sending: its requests go unanswered and fail with
    /// `IBV_WC_RETRY_EXC_ERR` once its retries run out ([`Qp::retry_time`]),
    /// then everything else is flushed; with nothing to send it never
    /// learns, and its receives stay posted. We do the same, except that
    /// receives are flushed [`GONE_GRACE`] after the peer went (a receiver
    /// never waits for ever for a dead peer): two applications that end
    /// together (the peer takes its last completion and closes; we take
    /// ours, with receives left posted or a last send the peer never
    /// needed, as rdma-core's pingpong examples leave them) see no error the
    /// other's leaving caused, unless they keep the queue pair that long.
    /// A message half received fails it at once.
    fn peer_gone(&mut self, dev: &Device) {
        self.words = None;
        // What the peer answered before it went is done, and what it sent
        // us that we placed (only our answers to it are left to go).
        if let Link::Up(mut c) = std::mem::replace(&mut self.link, Link::Idle) {
            let _ = self.complete(dev, &mut c);
        }
        for w in self.recv_wcs.drain(..) {
            self.recv_cq.push(w);
        }
        if self.state == IBV_QPS_ERR {
            return;
        }
        if !matches!(self.inbound, Inbound::Idle) {
            self.fail(dev, IBV_WC_RETRY_EXC_ERR);
            return;
        }
        // Answers for it, and its requests that found no receive, go
        // nowhere now (a NIC's would be lost the same way).
        self.out.clear();
        self.held.clear();
        self.held_bytes = 0;
        self.resp_reqs.clear();
        let wait = if self.inflight.is_empty() && self.sq.is_empty() { GONE_GRACE } else { self.retry_time() };
        log::debug!("ffverbs: QP {}: the peer went away; the queue pair fails in {wait:?} unless it is destroyed", self.qpn);
        self.link = Link::Gone { until: Instant::now() + wait };
    }

    /// How long a NIC retries an unanswered request before it fails it:
    /// the local ACK timeout (4.096 µs x 2^`timeout`) times `retry_cnt` + 1
    /// (perftest's and rdma-core's 14 and 7: 0.54 s), within
    /// [`RETRY_MIN`]..[`RETRY_MAX`]; timeout 0 (no timeout) counts as
    /// [`GONE_GRACE`].
    fn retry_time(&self) -> Duration {
        let t = self.attr.timeout.min(31) as u32;
        if t == 0 {
            return GONE_GRACE;
        }
        let once = Duration::from_nanos(4096u64 << t);
        (once * (self.attr.retry_cnt.min(7) as u32 + 1)).clamp(RETRY_MIN, RETRY_MAX)
    }

    /// Moves what can move; true if anything did.
    pub fn progress(&mut self, dev: &Device) -> bool {
        self.progress_with(dev, true)
    }

    /// What `ibv_post_send` does after queueing: puts the new requests in
    /// the ring, and leaves the answers for the next poll (the next
    /// `ibv_poll_cq` on an empty queue, or the service thread), so that a
    /// stream of sends pays for reading the ring once per batch.
    pub fn progress_send(&mut self, dev: &Device) -> bool {
        self.progress_with(dev, false)
    }

    /// Does `ibv_post_recv` need a progress pass: requests wait for a
    /// receive (see [`Held`]), or the connection is not up yet. Otherwise
    /// the new receive is used by the next pass that reads the ring.
    pub fn wants_progress_on_recv(&self) -> bool {
        !self.held.is_empty() || !matches!(self.link, Link::Up(_))
    }

    fn progress_with(&mut self, dev: &Device, full: bool) -> bool {
        if self.state == IBV_QPS_ERR || self.state == IBV_QPS_RESET || self.state == IBV_QPS_INIT {
            return false;
        }
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Idle => false,
            // A connect through two routers answers "not yet" for a while:
            // ask again every millisecond, not on every poll.
            Link::Connect { handle, since, next_try } if Instant::now() < next_try => {
                self.link = Link::Connect { handle, since, next_try };
                false
            }
            Link::Connect { handle, since, .. } => match dev.port.ff.connect(&handle) {
                Ok(Some(mut c)) => {
                    let hello = Hello { src_qpn: self.qpn, dst_qpn: self.remote.map_or(0, |r| r.1) };
                    match c.try_send_with(wire::HELLO, Hello::LEN, |p| {
                        // SAFETY: try_send_with hands us Hello::LEN writable bytes.
                        hello.write(unsafe { std::slice::from_raw_parts_mut(p, Hello::LEN) });
                        Hello::LEN
                    }) {
                        Ok(Some(_)) => {
                            self.attach(c);
                            true
                        }
                        _ => {
                            log::warn!("ffverbs: QP {}: cannot greet the peer", self.qpn);
                            self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                            true
                        }
                    }
                }
                Ok(None) if since.elapsed() < CONNECT_TIMEOUT => {
                    self.link = Link::Connect { handle, since, next_try: Instant::now() + Duration::from_millis(1) };
                    false
                }
                Ok(None) => {
                    log::warn!("ffverbs: QP {}: no connection to the peer within {CONNECT_TIMEOUT:?}", self.qpn);
                    self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                    true
                }
                Err(e) => {
                    log::warn!("ffverbs: QP {}: cannot reach the peer: {e}", self.qpn);
                    self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                    true
                }
            },
            Link::Accept { since } => {
                if since.elapsed() > CONNECT_TIMEOUT {
                    log::warn!("ffverbs: QP {}: the peer did not connect within {CONNECT_TIMEOUT:?}", self.qpn);
                    self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                    return true;
                }
                self.link = Link::Accept { since };
                false
            }
            Link::Up(mut c) => {
                let r = if full { self.run(dev, &mut c) } else { self.run_tx(&mut c) };
                if self.state != IBV_QPS_ERR {
                    self.link = Link::Up(c);
                }
                match r {
                    Ok(did) => did,
                    Err(why) => {
                        log::debug!("ffverbs: QP {}: {why}", self.qpn);
                        let gone = match &mut self.link {
                            Link::Up(c) => c.peer_closed() || !c.check_alive(),
                            _ => false,
                        };
                        if gone {
                            self.peer_gone(dev);
                        } else {
                            self.words = None;
                            self.link = Link::Idle;
                            self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                        }
                        true
                    }
                }
            }
            Link::Gone { mut until } => {
                if !self.sq.is_empty() {
                    // A request now goes unanswered too.
                    until = until.min(Instant::now() + self.retry_time());
                }
                if Instant::now() >= until {
                    self.fail(dev, IBV_WC_RETRY_EXC_ERR);
                    return true;
                }
                self.link = Link::Gone { until };
                false
            }
        }
    }

    fn run(&mut self, dev: &Device, c: &mut Conn) -> Result<bool, String> {
        // Moves the bytes of large messages under way, both ways.
        c.progress();
        let mut did = false;
        if self.state == IBV_QPS_RTS {
            did |= self.tx(c)?;
        }
        did |= self.rx(dev, c)?;
        did |= self.flush_out(c)?;
        // Our requests' completions first: their answers came before
        // whatever we just received (a NIC's ACK comes before the peer's
        // reply to our message). Applications that share one completion
        // channel between the two queues count on it (perftest's
        // `ib_send_lat -e` takes the first event as its send's).
        did |= self.complete(dev, c)?;
        // Receives complete once our answers to them are in the ring, so
        // the application's reply never overtakes them.
        if self.out.is_empty() {
            for w in self.recv_wcs.drain(..) {
                self.recv_cq.push(w);
            }
        }
        Ok(did)
    }

    fn run_tx(&mut self, c: &mut Conn) -> Result<bool, String> {
        if self.state != IBV_QPS_RTS {
            return Ok(false);
        }
        c.progress();
        self.tx(c)
    }

    fn tx(&mut self, c: &mut Conn) -> Result<bool, String> {
        let mut did = false;
        let inline_max = INLINE_MAX.min(c.max_whole() - Hdr::LEN);
        while !self.sq.is_empty() {
            if self.inflight.is_empty() && self.try_direct() {
                did = true;
                continue;
            }
            let Some(wr) = self.sq.front() else { break };
            let mut hdr = Hdr { seq: self.next_seq, raddr: wr.raddr, rkey: wr.rkey, len: wr.len, imm: wr.imm.unwrap_or(0), flags: 0, status: 0 };
            if wr.imm.is_some() {
                hdr.flags |= F_IMM;
            }
            let tag = match wr.op {
                Op::Send => wire::SEND,
                Op::Write => wire::WRITE,
                Op::Read => wire::READ,
                Op::FetchAdd { .. } | Op::CmpSwap { .. } => wire::ATOMIC,
            };
            let atomic = wr.op.atomic();
            if let Some((op, ..)) = atomic {
                // The operation where a SEND's immediate goes, its operands
                // as the payload.
                hdr.imm = op.code() as u32;
            }
            let inline = !wr.op.fetches() && wr.len as usize <= inline_max;
            if !inline && !wr.op.fetches() {
                hdr.flags |= F_DATA_NEXT;
            }
            let max = Hdr::LEN + if inline { wr.len as usize } else { 0 } + if atomic.is_some() { 16 } else { 0 };
            let sent = c
                .try_send_with(tag, max, |p| {
                    // SAFETY: `max` writable bytes at p; the work request's
                    // memory was checked when posted.
                    unsafe {
                        hdr.write(std::slice::from_raw_parts_mut(p, Hdr::LEN));
                        if inline {
                            gather(wr, p.add(Hdr::LEN));
                        }
                        if let Some((_, value, compare)) = atomic {
                            let b = std::slice::from_raw_parts_mut(p.add(Hdr::LEN), 16);
                            b[..8].copy_from_slice(&value.to_le_bytes());
                            b[8..].copy_from_slice(&compare.to_le_bytes());
                        }
                    }
                    max
                })
                .map_err(|e| e.to_string())?;
            if sent.is_none() {
                break;
            }
            let wr = self.sq.pop_front().unwrap();
            let (mut data, mut bounce) = (None, None);
            if hdr.flags & F_DATA_NEXT != 0 {
                let ptr = if wr.sges.len() == 1 && wr.inline.is_none() {
                    wr.sges[0].addr as *const u8
                } else {
                    let mut b = vec![0u8; wr.len as usize];
                    // SAFETY: b holds the request's length.
                    unsafe { gather(&wr, b.as_mut_ptr()) };
                    let p = b.as_ptr();
                    bounce = Some(b);
                    p
                };
                // SAFETY: the buffer (registered, or our bounce kept in the
                // Inflight) stays until the request completes.
                data = Some(unsafe { c.isend(ptr, wr.len as usize, wire::DATA) }.map_err(|e| e.to_string())?);
            }
            let dst = if wr.op.fetches() { wr.sges.clone() } else { Sges::new() };
            self.inflight.push_back(Inflight {
                seq: self.next_seq,
                wr_id: wr.wr_id,
                op: wr.op,
                signaled: wr.signaled,
                len: wr.len,
                answered: None,
                data,
                _bounce: bounce,
                dst,
            });
            self.next_seq += 1;
            did = true;
        }
        Ok(did)
    }

    /// Does the work request at the front itself, in the peer's mapped
    /// registration, if it may (see [`crate::wire`]); true if done.
    fn try_direct(&mut self) -> bool {
        let Some(wr) = self.sq.front() else { return false };
        if wr.op == Op::Send || wr.imm.is_some() {
            return false;
        }
        let Some(d) = self.direct.get(&wr.rkey) else { return false };
        if let Some((op, value, compare)) = wr.op.atomic() {
            if d.access & IBV_ACCESS_REMOTE_ATOMIC == 0 || !d.holds(wr.raddr, 8) {
                return false;
            }
            // One CPU atomic on the peer's shared page: atomic with respect
            // to the peer's own atomics and to every other requester's.
            let Ok(old) = d.map.atomic(wr.raddr, Width::W64, op, value, compare) else {
                let k = wr.rkey;
                self.direct.remove(&k);
                return false;
            };
            let wr = self.sq.pop_front().unwrap();
            // SAFETY: the local element (8 bytes, writable) was checked when posted.
            unsafe { scatter(&wr.sges, old.to_le_bytes().as_ptr(), 8) };
            if wr.signaled {
                self.send_cq.push(wc(wr.wr_id, IBV_WC_SUCCESS, send_opcode(wr.op), 8, self.qpn));
            }
            return true;
        }
        let need = if wr.op == Op::Write { IBV_ACCESS_REMOTE_WRITE } else { IBV_ACCESS_REMOTE_READ };
        if d.access & need == 0 || !d.holds(wr.raddr, wr.len) || d.map.at(wr.raddr, wr.len as usize).is_err() {
            return false;
        }
        let mut off = 0u64;
        let mut ok = true;
        let parts: Vec<(u64, u64)> = match &wr.inline {
            Some(b) => vec![(b.as_ptr() as u64, b.len() as u64)],
            None => wr.sges.iter().map(|s| (s.addr, s.len as u64)).collect(),
        };
        for (p, n) in parts {
            // SAFETY: our side of each element was checked against our
            // registrations when posted (or is the inline copy); the peer's
            // side is bounds-checked by the mapping.
            let r = unsafe {
                match wr.op {
                    Op::Write => d.map.write(wr.raddr + off, p as *const u8, n as usize),
                    _ => d.map.read(wr.raddr + off, p as *mut u8, n as usize),
                }
            };
            if r.is_err() {
                ok = false;
                break;
            }
            off += n;
        }
        if !ok {
            // Deregistered meanwhile: the responder decides, by message.
            let k = wr.rkey;
            self.direct.remove(&k);
            return false;
        }
        let wr = self.sq.pop_front().unwrap();
        if wr.signaled {
            self.send_cq.push(wc(wr.wr_id, IBV_WC_SUCCESS, send_opcode(wr.op), wr.len, self.qpn));
        }
        true
    }

    /// Tells a peer on this host how to reach our registration `rkey`
    /// itself (once per key), if it is shadow memory.
    fn announce(&mut self, dev: &Device, rkey: u32) {
        if !self.local_peer || !self.announced.insert(rkey) {
            return;
        }
        let qp_access = self.access;
        let rkey_msg = dev.with_mr(rkey, |m| {
            let sh = m.shadow.as_ref()?;
            let access = m.access & qp_access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
            let key = if access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC) != 0 { sh.remote_key() } else { sh.remote_read_key() };
            let key = key.filter(|_| sh.shared_range().1 > 0)?;
            Some(Reply::Rkey { hdr: Hdr { rkey, raddr: m.addr, len: m.len, flags: access, ..Default::default() }, key })
        });
        if let Some(r) = rkey_msg.flatten() {
            self.out.push_back(r);
        }
    }

    fn ack(&mut self, seq: u64, status: Status) {
        if status == 0 {
            if let Some(Reply::Ack { seq: s, status: 0 }) = self.out.back_mut() {
                *s = seq;
                return;
            }
        }
        self.out.push_back(Reply::Ack { seq, status });
    }

    fn rx(&mut self, dev: &Device, c: &mut Conn) -> Result<bool, String> {
        let mut did = false;
        loop {
            if let Inbound::Data { req, .. } = &self.inbound {
                match c.test(*req) {
                    Ok(Some(n)) => {
                        let Inbound::Data { after, _buf, .. } = std::mem::replace(&mut self.inbound, Inbound::Idle) else { unreachable!() };
                        self.finish(dev, after, n, _buf)?;
                        did = true;
                    }
                    Ok(None) => return Ok(did),
                    // A discard's receive has no room: the message is
                    // consumed as truncated.
                    Err(ffcore::Error::Truncated { .. }) if matches!(self.inbound, Inbound::Data { after: After::Discard, .. }) => {
                        self.inbound = Inbound::Idle;
                        did = true;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            did |= self.run_held(dev);
            if self.out.len() >= MAX_OUT || self.held_bytes > HELD_MAX {
                return Ok(did);
            }
            let mut next = Next::Nothing;
            let got = match c.poll_whole(|tag, p, len| next = self.on_msg(dev, tag, p, len)) {
                Ok(g) => g,
                Err(ffcore::Error::PeerClosed) => return Err("the peer closed".into()),
                Err(e) => return Err(e.to_string()),
            };
            if !got {
                if c.peer_closed() && !c.has_events() {
                    return Err("the peer closed".into());
                }
                return Ok(did);
            }
            did = true;
            self.post(c, next)?;
        }
    }

    fn hold(&mut self, tag: u32, hdr: Hdr, data: Vec<u8>, placed: bool) {
        self.held_bytes += data.len() + HELD_ENTRY;
        self.held.push_back(Held { tag, hdr, data, placed });
    }

    /// Serves held requests in order, as far as receives allow.
    fn run_held(&mut self, dev: &Device) -> bool {
        let mut did = false;
        while let Some(h) = self.held.front() {
            let needs_recv = h.tag == wire::SEND || (h.tag == wire::WRITE && h.hdr.flags & F_IMM != 0);
            if needs_recv && !self.has_recv() {
                break;
            }
            // A SEND takes its receive here; a WRITE with immediate in
            // write_done, after its bytes are placed.
            let recv = if h.tag == wire::SEND {
                match self.take_recv(dev) {
                    Some(r) => Some(r),
                    None => break,
                }
            } else {
                None
            };
            let Some(h) = self.held.pop_front() else { break };
            self.held_bytes -= h.data.len() + HELD_ENTRY;
            let imm = (h.hdr.flags & F_IMM != 0).then_some(h.hdr.imm);
            match (h.tag, recv) {
                (wire::SEND, Some(r)) => {
                    // SAFETY: the receive's elements were checked when posted.
                    if unsafe { scatter(&r.sges, h.data.as_ptr(), h.data.len()) } {
                        self.recv_done(r.wr_id, h.data.len() as u64, imm, false);
                        self.ack(h.hdr.seq, 0);
                    } else {
                        self.recv_wcs.push(wc(r.wr_id, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, self.recv_qpn));
                        self.ack(h.hdr.seq, IBV_WC_REM_INV_REQ_ERR);
                    }
                }
                (wire::WRITE, _) if h.placed => self.write_done(dev, h.hdr.seq, imm, h.hdr.len),
                (wire::WRITE, _) => match dev.check_remote(self.pd, self.access, h.hdr.rkey, h.hdr.raddr, h.hdr.len, IBV_ACCESS_REMOTE_WRITE) {
                    Err(st) => self.ack(h.hdr.seq, st),
                    Ok(dst) => {
                        let w = ffcore::shadow::writing();
                        // SAFETY: registered memory the peer may write, h.hdr.len == data.len().
                        unsafe { std::ptr::copy_nonoverlapping(h.data.as_ptr(), dst, h.data.len()) };
                        drop(w);
                        self.announce(dev, h.hdr.rkey);
                        self.write_done(dev, h.hdr.seq, imm, h.hdr.len);
                    }
                },
                (wire::ATOMIC, _) => self.atomic_req(dev, &h.hdr, &h.data),
                _ => self.read_req(dev, &h.hdr),
            }
            did = true;
        }
        did
    }

    /// Does an atomic on our registered memory for the peer (`ops`: its
    /// 16 operand bytes, checked when the request came in; anything else
    /// is refused here too).
    fn atomic_req(&mut self, dev: &Device, h: &Hdr, ops: &[u8]) {
        let Ok(ops) = <&[u8; 16]>::try_from(ops) else {
            self.out.push_back(Reply::Value { seq: h.seq, value: 0, status: IBV_WC_REM_INV_REQ_ERR });
            return;
        };
        let value = u64::from_le_bytes(ops[..8].try_into().unwrap());
        let compare = u64::from_le_bytes(ops[8..].try_into().unwrap());
        let reply = match (AtomicOp::from_code(h.imm as u8), dev.check_remote(self.pd, self.access, h.rkey, h.raddr, 8, IBV_ACCESS_REMOTE_ATOMIC)) {
            (_, Err(st)) => Reply::Value { seq: h.seq, value: 0, status: st },
            (Some(op @ (AtomicOp::Add | AtomicOp::Cswap)), Ok(p)) if ffcore::atomic::aligned(h.raddr, Width::W64) => {
                self.announce(dev, h.rkey);
                let w = ffcore::shadow::writing();
                // SAFETY: 8 bytes of registered memory the peer may change, aligned.
                let old = unsafe { ffcore::atomic::apply(p, Width::W64, op, value, compare) };
                drop(w);
                Reply::Value { seq: h.seq, value: old, status: 0 }
            }
            _ => Reply::Value { seq: h.seq, value: 0, status: IBV_WC_REM_INV_REQ_ERR },
        };
        self.out.push_back(reply);
    }

    fn read_req(&mut self, dev: &Device, h: &Hdr) {
        match dev.check_remote(self.pd, self.access, h.rkey, h.raddr, h.len, IBV_ACCESS_REMOTE_READ) {
            Err(st) => self.out.push_back(Reply::Read { seq: h.seq, ptr: 0, len: 0, status: st }),
            Ok(src) => {
                self.out.push_back(Reply::Read { seq: h.seq, ptr: src as u64, len: h.len, status: 0 });
                self.announce(dev, h.rkey);
            }
        }
    }

    fn post(&mut self, c: &mut Conn, next: Next) -> Result<(), String> {
        match next {
            Next::Nothing => Ok(()),
            Next::Broken(why) => Err(why),
            Next::Recv { ptr, len, after, buf } => {
                // SAFETY: ptr is checked registered memory, or `buf`, which
                // the Inbound keeps until the receive completes.
                let req = unsafe { c.irecv(ptr, len, wire::DATA) }.map_err(|e| e.to_string())?;
                self.inbound = Inbound::Data { req, after, _buf: buf };
                Ok(())
            }
        }
    }

    /// A receive for a SEND of `hdr.len` bytes whose DATA follows.
    fn recv_into(&mut self, r: RecvWr, hdr: Hdr) -> Next {
        let len = hdr.len as usize;
        let imm = (hdr.flags & F_IMM != 0).then_some(hdr.imm);
        let cap: usize = r.sges.iter().map(|s| s.len as usize).sum();
        if cap < len {
            self.recv_wcs.push(wc(r.wr_id, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, self.recv_qpn));
            self.ack(hdr.seq, IBV_WC_REM_INV_REQ_ERR);
            return Next::discard();
        }
        if r.sges.first().is_some_and(|s| s.len as usize >= len) {
            let ptr = r.sges[0].addr as *mut u8;
            return Next::Recv { ptr, len, after: After::Recv { wr_id: r.wr_id, seq: hdr.seq, imm, bounce: None }, buf: None };
        }
        let mut b = vec![0u8; len];
        let ptr = b.as_mut_ptr();
        Next::Recv { ptr, len, after: After::Recv { wr_id: r.wr_id, seq: hdr.seq, imm, bounce: Some((b, r.sges)) }, buf: None }
    }

    fn recv_done(&mut self, wr_id: u64, len: u64, imm: Option<u32>, write: bool) {
        let mut w = wc(wr_id, IBV_WC_SUCCESS, if write { IBV_WC_RECV_RDMA_WITH_IMM } else { IBV_WC_RECV }, len, self.recv_qpn);
        if let Some(i) = imm {
            w.__bindgen_anon_1.imm_data = i;
            w.wc_flags |= IBV_WC_WITH_IMM;
        }
        if let Some((_, q)) = self.remote {
            w.src_qp = q;
        }
        self.recv_wcs.push(w);
    }

    /// One message from the peer (`len` bytes at `p`, in the shared ring:
    /// the header is copied out once, then checked).
    fn on_msg(&mut self, dev: &Device, tag: u32, p: *const u8, len: usize) -> Next {
        if len < Hdr::LEN {
            return Next::Broken(format!("message of {len} bytes with tag {tag}"));
        }
        let mut hb = [0u8; Hdr::LEN];
        // SAFETY: len >= Hdr::LEN bytes are readable at p.
        unsafe { std::ptr::copy_nonoverlapping(p, hb.as_mut_ptr(), Hdr::LEN) };
        let h = Hdr::read(&hb).unwrap();
        // SAFETY: the rest of the message.
        let payload = unsafe { p.add(Hdr::LEN) };
        let plen = len - Hdr::LEN;
        let data_next = h.flags & F_DATA_NEXT != 0;
        let imm = (h.flags & F_IMM != 0).then_some(h.imm);
        log::trace!("QP {}: message {tag} {h:?} ({plen} bytes after the header)", self.qpn);
        let mut recv = None;
        if matches!(tag, wire::SEND | wire::WRITE | wire::READ | wire::ATOMIC) {
            if h.seq != self.expect_seq {
                return Next::Broken(format!("request {} where {} was due", h.seq, self.expect_seq));
            }
            self.expect_seq += 1;
            if !data_next && tag != wire::READ && tag != wire::ATOMIC && plen as u64 != h.len {
                return Next::Broken("inline length mismatch".into());
            }
            if tag == wire::ATOMIC && plen != 16 {
                return Next::Broken("atomic without its operands".into());
            }
            if data_next && (tag == wire::READ || tag == wire::ATOMIC) {
                return Next::Broken(format!("request with tag {tag} says data follows"));
            }
            // A SEND takes its receive now; a WRITE with immediate once its
            // bytes are placed (write_done).
            if tag == wire::SEND && self.held.is_empty() {
                recv = self.take_recv(dev);
            }
            let missing = match tag {
                wire::SEND => recv.is_none(),
                _ => tag == wire::WRITE && imm.is_some() && !self.has_recv(),
            };
            if !self.held.is_empty() || missing {
                if h.len > 1 << 31 {
                    return Next::Broken("request over 2 GiB".into());
                }
                if data_next {
                    let mut b = vec![0u8; h.len as usize];
                    return Next::Recv { ptr: b.as_mut_ptr(), len: b.len(), after: After::Hold { tag, hdr: h }, buf: Some(b) };
                }
                let mut data = vec![0u8; if tag == wire::READ { 0 } else { plen }]; // an atomic's operands
                // SAFETY: plen bytes at payload.
                unsafe { std::ptr::copy_nonoverlapping(payload, data.as_mut_ptr(), data.len()) };
                self.hold(tag, h, data, false);
                return Next::Nothing;
            }
        }
        match tag {
            wire::SEND => {
                let Some(r) = recv else { return Next::Broken("SEND without a receive".into()) };
                if data_next {
                    return self.recv_into(r, h);
                }
                // SAFETY: the receive's elements were checked when posted; plen bytes at payload.
                if unsafe { scatter(&r.sges, payload, plen) } {
                    self.recv_done(r.wr_id, plen as u64, imm, false);
                    self.ack(h.seq, 0);
                } else {
                    self.recv_wcs.push(wc(r.wr_id, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, self.recv_qpn));
                    self.ack(h.seq, IBV_WC_REM_INV_REQ_ERR);
                }
                Next::Nothing
            }
            wire::WRITE => match dev.check_remote(self.pd, self.access, h.rkey, h.raddr, h.len, IBV_ACCESS_REMOTE_WRITE) {
                Err(st) => {
                    self.ack(h.seq, st);
                    if data_next {
                        return Next::discard();
                    }
                    Next::Nothing
                }
                Ok(dst) if data_next => {
                    self.announce(dev, h.rkey);
                    Next::Recv { ptr: dst, len: h.len as usize, after: After::Write { seq: h.seq, imm, len: h.len }, buf: None }
                }
                Ok(dst) => {
                    self.announce(dev, h.rkey);
                    let w = ffcore::shadow::writing();
                    // SAFETY: dst..dst+len is registered memory the peer may write.
                    unsafe { std::ptr::copy_nonoverlapping(payload, dst, plen) };
                    drop(w);
                    self.write_done(dev, h.seq, imm, h.len);
                    Next::Nothing
                }
            },
            wire::READ => {
                self.read_req(dev, &h);
                Next::Nothing
            }
            wire::ATOMIC => {
                let mut ops = [0u8; 16];
                // SAFETY: plen == 16 bytes at payload.
                unsafe { std::ptr::copy_nonoverlapping(payload, ops.as_mut_ptr(), 16) };
                self.atomic_req(dev, &h, &ops);
                Next::Nothing
            }
            wire::READ_RESP => {
                let Some(f) = self.inflight.iter_mut().find(|f| f.seq == h.seq && f.op.fetches() && f.answered.is_none()) else {
                    return Next::Broken(format!("READ answer {} for no READ", h.seq));
                };
                if h.status != 0 {
                    f.answered = Some(h.status);
                    return Next::Nothing;
                }
                if h.len != f.len {
                    return Next::Broken("READ answer of the wrong length".into());
                }
                if !data_next {
                    if plen as u64 != f.len {
                        return Next::Broken("READ answer of the wrong length".into());
                    }
                    // SAFETY: the destination was checked when posted.
                    unsafe { scatter(&f.dst, payload, plen) };
                    f.answered = Some(0);
                    return Next::Nothing;
                }
                let len = f.len as usize;
                if f.dst.len() == 1 {
                    let ptr = f.dst[0].addr as *mut u8;
                    return Next::Recv { ptr, len, after: After::ReadResp { seq: h.seq, bounce: None }, buf: None };
                }
                let mut b = vec![0u8; len];
                let ptr = b.as_mut_ptr();
                Next::Recv { ptr, len, after: After::ReadResp { seq: h.seq, bounce: Some((b, f.dst.clone())) }, buf: None }
            }
            wire::RKEY => {
                if plen >= RemoteKey::LEN && self.local_peer && (self.direct.len() < DIRECT_MAX || self.direct.contains_key(&h.rkey)) {
                    let mut kb = [0u8; RemoteKey::LEN];
                    // SAFETY: plen >= RemoteKey::LEN bytes at payload.
                    unsafe { std::ptr::copy_nonoverlapping(payload, kb.as_mut_ptr(), RemoteKey::LEN) };
                    match dev.port.ff.map_remote(&RemoteKey::read(&kb)) {
                        Ok(map) => {
                            self.direct.insert(h.rkey, Direct { addr: h.raddr, len: h.len, access: h.flags, map });
                        }
                        Err(e) => log::debug!("ffverbs: QP {}: cannot map the peer's key {:#x}: {e}", self.qpn, h.rkey),
                    }
                }
                Next::Nothing
            }
            wire::ACK => {
                for f in self.inflight.iter_mut().filter(|f| f.seq <= h.seq && !f.op.fetches() && f.answered.is_none()) {
                    f.answered = Some(if f.seq == h.seq { h.status } else { 0 });
                }
                Next::Nothing
            }
            t => Next::Broken(format!("unexpected message tag {t}")),
        }
    }

    fn write_done(&mut self, dev: &Device, seq: u64, imm: Option<u32>, len: u64) {
        let Some(i) = imm else { return self.ack(seq, 0) };
        match self.take_recv(dev) {
            Some(r) => {
                self.recv_done(r.wr_id, len, imm, true);
                self.ack(seq, 0);
            }
            None => {
                let hdr = Hdr { seq, len, imm: i, flags: F_IMM, ..Default::default() };
                self.held.push_front(Held { tag: wire::WRITE, hdr, data: Vec::new(), placed: true });
            }
        }
    }

    fn finish(&mut self, dev: &Device, after: After, n: usize, buf: Option<Vec<u8>>) -> Result<(), String> {
        match after {
            After::Discard => {}
            After::Hold { tag, hdr } => {
                let data = buf.unwrap_or_default();
                if n as u64 != hdr.len || data.len() != n {
                    return Err("request data of the wrong length".into());
                }
                self.hold(tag, hdr, data, false);
            }
            After::Write { seq, imm, len } => {
                if n as u64 != len {
                    return Err("WRITE data of the wrong length".into());
                }
                self.write_done(dev, seq, imm, len);
            }
            After::Recv { wr_id, seq, imm, bounce } => {
                if let Some((b, sges)) = bounce {
                    // SAFETY: the receive's elements were checked when posted.
                    unsafe { scatter(&sges, b.as_ptr(), n) };
                }
                self.recv_done(wr_id, n as u64, imm, false);
                self.ack(seq, 0);
            }
            After::ReadResp { seq, bounce } => {
                if let Some((b, sges)) = bounce {
                    // SAFETY: the destination was checked when posted.
                    unsafe { scatter(&sges, b.as_ptr(), n) };
                }
                if let Some(f) = self.inflight.iter_mut().find(|f| f.seq == seq) {
                    // Fewer bytes than the READ asked for would leave the
                    // rest of its buffer as it was, reported complete.
                    if n as u64 != f.len {
                        return Err("READ data of the wrong length".into());
                    }
                    f.answered = Some(0);
                }
            }
        }
        Ok(())
    }

    fn flush_out(&mut self, c: &mut Conn) -> Result<bool, String> {
        let mut did = false;
        let inline_max = INLINE_MAX.min(c.max_whole() - Hdr::LEN);
        while let Some(&r) = self.out.front() {
            // The answer's header and the bytes that go with it in the same
            // message: a body of our own (a key, an old value), inline READ
            // data from a registration, or nothing; big READ data follows
            // as its own message.
            let mut own = [0u8; RemoteKey::LEN];
            let (tag, hdr, body, n, data_next) = match r {
                Reply::Ack { seq, status } => (wire::ACK, Hdr { seq, status, ..Default::default() }, own.as_ptr(), 0, false),
                Reply::Rkey { hdr, key } => {
                    key.write(&mut own);
                    (wire::RKEY, hdr, own.as_ptr(), RemoteKey::LEN, false)
                }
                Reply::Value { seq, value, status } => {
                    own[..8].copy_from_slice(&value.to_le_bytes());
                    let n = if status == 0 { 8 } else { 0 };
                    (wire::READ_RESP, Hdr { seq, len: 8, status, ..Default::default() }, own.as_ptr(), n, false)
                }
                Reply::Read { seq, ptr, len, status } => {
                    let mut h = Hdr { seq, len, status, ..Default::default() };
                    let inline = if status == 0 && len as usize <= inline_max { len as usize } else { 0 };
                    let next = status == 0 && inline == 0 && len > 0;
                    if next {
                        h.flags |= F_DATA_NEXT;
                    }
                    (wire::READ_RESP, h, ptr as *const u8, inline, next)
                }
            };
            let max = Hdr::LEN + n;
            let sent = c
                .try_send_with(tag, max, |p| {
                    // SAFETY: max writable bytes at p; body is our own
                    // buffer or (n > 0) a range checked against our
                    // registrations.
                    unsafe {
                        hdr.write(std::slice::from_raw_parts_mut(p, Hdr::LEN));
                        if n > 0 {
                            std::ptr::copy_nonoverlapping(body, p.add(Hdr::LEN), n);
                        }
                    }
                    max
                })
                .map_err(|e| e.to_string())?;
            if sent.is_none() {
                break;
            }
            if data_next {
                // SAFETY: registered memory the application keeps while registered.
                let req = unsafe { c.isend(body, hdr.len as usize, wire::DATA) }.map_err(|e| e.to_string())?;
                self.resp_reqs.push(req);
            }
            self.out.pop_front();
            did = true;
        }
        let mut i = 0;
        while i < self.resp_reqs.len() {
            match c.test(self.resp_reqs[i]) {
                Ok(None) => i += 1,
                Ok(Some(_)) => {
                    self.resp_reqs.swap_remove(i);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(did)
    }

    fn complete(&mut self, dev: &Device, c: &mut Conn) -> Result<bool, String> {
        let mut did = false;
        while let Some(f) = self.inflight.front_mut() {
            let Some(st) = f.answered else { break };
            if let Some(req) = f.data {
                match c.test(req) {
                    Ok(Some(_)) => f.data = None,
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if st != 0 {
                self.fail(dev, st);
                return Ok(true);
            }
            let f = self.inflight.pop_front().unwrap();
            if f.signaled {
                self.send_cq.push(wc(f.wr_id, IBV_WC_SUCCESS, send_opcode(f.op), f.len, self.qpn));
            }
            did = true;
        }
        Ok(did)
    }
}

fn send_opcode(op: Op) -> u32 {
    match op {
        Op::Send => IBV_WC_SEND,
        Op::Write => IBV_WC_RDMA_WRITE,
        Op::Read => IBV_WC_RDMA_READ,
        Op::FetchAdd { .. } => IBV_WC_FETCH_ADD,
        Op::CmpSwap { .. } => IBV_WC_COMP_SWAP,
    }
}

/// The handle of the device context a GID names.
pub fn handle_for(dev: &Device, gid: &[u8; 16]) -> Handle {
    let g = Gid::from_bytes(gid);
    let same = g.ip == [0; 4] || dev.port.own.addr.is_some_and(|a| matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.octets() == g.ip));
    let addr = (g.ip != [0; 4]).then(|| std::net::SocketAddr::from((g.ip, dev.port.own.addr.map_or(0, |a| a.port()))));
    // A router on another host is named by its address; the id of the
    // router there is not in the GID (see the README).
    let router_id = if same { dev.port.own.router_id } else { [0; 16] };
    Handle { router_id, listener: g.listener as u64, nonce: g.nonce, addr }
}

/// A connection accepted for one of the process's queue pairs, before its
/// HELLO found it.
pub struct Pending {
    conn: Conn,
    words: Option<Arc<ConnWords>>,
    hello: Option<Hello>,
    since: Instant,
}

/// The context's queue pair numbers go back to the port with it.
impl Drop for Engine {
    fn drop(&mut self) {
        for qpn in self.qps.keys().chain(self.ud_qps.keys()) {
            self.port.release(*qpn, &self.me);
        }
    }
}

/// Everything of a device context that moves: its queue pairs, and what
/// it accepts on the port's listener.
pub struct Engine {
    port: Arc<Port>,
    /// Its device (the owner of the queue pair numbers it takes).
    me: Weak<Device>,
    /// Our own queue pair numbers (a fast hash is safe here).
    pub qps: FxHashMap<u32, Qp>,
    /// UD queue pairs (the same numbers' space as `qps`).
    pub ud_qps: FxHashMap<u32, UdQp>,
    pub links: ud::Links,
    pending: Vec<Pending>,
}

impl Engine {
    pub fn new(port: Arc<Port>, me: Weak<Device>) -> Engine {
        Engine { port, me, qps: FxHashMap::default(), ud_qps: FxHashMap::default(), links: ud::Links::default(), pending: Vec::new() }
    }

    /// A queue pair number of the port's, now this context's (given back
    /// by [`Engine::remove_qp`], or when the context goes).
    pub fn new_qpn(&mut self) -> u32 {
        self.port.new_qpn(&self.me)
    }

    /// Takes queue pair `qpn` (and its twin, if any) out of the context,
    /// and gives their numbers back to the port.
    pub fn remove_qp(&mut self, qpn: u32) {
        if let Some(t) = self.qps.remove(&qpn).and_then(|q| q.twin) {
            self.remove_qp(t);
        }
        self.ud_qps.remove(&qpn);
        self.port.release(qpn, &self.me);
    }

    /// A queue pair connected to itself (RTR with its own GID and number,
    /// which UCX does for an endpoint to its own worker): a hidden twin,
    /// connected to it like any peer, serves its requests. The queue pair's
    /// receive queue becomes an SRQ the two share (a SEND lands in the
    /// queue pair's own receives), and the twin's receive completions go
    /// to the queue pair's CQ with its number. Returns the twin's number.
    pub fn loopback(&mut self, dev: &Device, qpn: u32) -> Result<u32, i32> {
        let old = self.qps.get_mut(&qpn).ok_or(libc::EINVAL)?.twin.take();
        if let Some(t) = old {
            self.remove_qp(t);
        }
        let t = self.new_qpn();
        let Some(a) = self.qps.get_mut(&qpn) else {
            self.port.release(t, &self.me);
            return Err(libc::EINVAL);
        };
        if a.srq.is_none() {
            let s = Srq::new(a.pd, a.cap.max_recv_wr.max(1), a.cap.max_recv_sge.max(1), 0)?;
            s.state.lock().unwrap().rq.extend(a.rq.drain(..));
            a.srq = Some(Arc::new(s));
            a.internal_srq = true;
        }
        let mut tw = Qp::new(t, a.pd, a.send_cq.clone(), a.recv_cq.clone(), a.srq.clone(), false, a.cap);
        tw.recv_qpn = qpn;
        tw.access = a.access;
        tw.state = IBV_QPS_RTR;
        tw.to_rtr(dev, dev.port.gid, qpn)?;
        a.twin = Some(t);
        self.qps.insert(t, tw);
        Ok(t)
    }

    pub fn progress(&mut self, dev: &Device) -> bool {
        let mut did = false;
        // What other contexts of the process took for ours.
        let datagrams = {
            let mut inbox = dev.inbox.lock().unwrap();
            did |= !inbox.conns.is_empty() || !inbox.datagrams.is_empty();
            self.pending.append(&mut inbox.conns);
            std::mem::take(&mut inbox.datagrams)
        };
        for (h, data) in datagrams {
            if let Some(q) = self.ud_qps.get_mut(&h.dst_qpn) {
                q.deliver(dev, &h, &data);
            }
        }
        loop {
            match self.port.listener.accept() {
                Ok(Some(conn)) => {
                    let words = conn.wake_words().ok();
                    self.pending.push(Pending { conn, words, hello: None, since: Instant::now() });
                    did = true;
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("ffverbs: accept: {e}");
                    break;
                }
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if p.hello.is_none() {
                let mut bad = false;
                let mut hello = None;
                let r = p.conn.poll_whole(|tag, d, len| {
                    let mut b = [0u8; Hello::LEN];
                    if tag == wire::HELLO && len == Hello::LEN {
                        // SAFETY: len bytes at d.
                        unsafe { std::ptr::copy_nonoverlapping(d, b.as_mut_ptr(), Hello::LEN) };
                        hello = Hello::read(&b);
                    } else {
                        bad = true;
                    }
                });
                p.hello = hello;
                if bad || r.is_err() {
                    self.pending.swap_remove(i);
                    continue;
                }
            }
            if p.hello.is_some_and(|h| h.src_qpn == ud::LINK_QPN) {
                let p = self.pending.swap_remove(i);
                self.links.accepted(p.conn, p.words);
                did = true;
                continue;
            }
            let found = p.hello.and_then(|h| self.qps.get(&h.dst_qpn).filter(|q| q.waiting_for(h.src_qpn)).map(|_| h.dst_qpn));
            if let Some(qpn) = found {
                let p = self.pending.swap_remove(i);
                self.qps.get_mut(&qpn).unwrap().attach(p.conn);
                dev.kick();
                did = true;
                continue;
            }
            // For a queue pair of another context of the process: its.
            let other = p.hello.filter(|h| !self.qps.contains_key(&h.dst_qpn)).and_then(|h| self.port.owner(h.dst_qpn));
            if let Some(owner) = other.filter(|o| !std::ptr::eq(Arc::as_ptr(o), dev)) {
                let p = self.pending.swap_remove(i);
                owner.inbox.lock().unwrap().conns.push(p);
                owner.kick();
                did = true;
                continue;
            }
            if p.since.elapsed() > CONNECT_TIMEOUT {
                self.pending.swap_remove(i);
                continue;
            }
            i += 1;
        }
        for qp in self.qps.values_mut() {
            did |= qp.progress(dev);
        }
        if !self.ud_qps.is_empty() || self.links.has_inbound() {
            did |= ud::progress(dev, &mut self.links, &mut self.ud_qps);
        }
        did
    }

    /// Checks that every queue pair's peer still lives (a system call
    /// each); the service thread does it every [`ALIVE_EVERY`].
    pub fn check_alive(&mut self, dev: &Device) {
        for qp in self.qps.values_mut() {
            qp.check_alive(dev);
        }
    }

    /// Announces a sleep on every connection; None if there is work now.
    fn arm(&mut self) -> Option<Vec<WakeWord>> {
        let mut words: Vec<WakeWord> = self.qps.values().filter_map(|q| q.arm()).collect();
        words.extend(self.pending.iter().filter_map(|p| p.words.as_ref().map(|w| w.arm())));
        self.links.arm(&mut words);
        words.push(self.port.listener.wake_word());
        // A connection whose HELLO names a queue pair not yet at RTR waits
        // for modify_qp, which kicks us.
        let busy = self.port.listener.may_have_pending()
            || self.pending.iter_mut().any(|p| p.hello.is_none() && p.conn.has_events())
            || self.qps.values_mut().any(|q| q.has_events())
            || self.links.has_events();
        if busy {
            for w in &words {
                w.cancel();
            }
            return None;
        }
        Some(words)
    }
}

/// How often the service thread checks that the peers still live (a
/// dead peer's work fails within about this, plus the sleep below).
pub const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// The service thread's nap while the application calls in itself.
const APP_NAP: Duration = Duration::from_micros(200);
/// The service thread's longest sleep (connection deadlines, liveness).
const SLEEP_MAX: Duration = Duration::from_millis(250);

/// The device's service thread: progress while the application is not
/// driving it, asleep (no polling) while nothing happens.
pub fn service(dev: Arc<Device>) {
    // Transfers this thread ends may hold the last reference to shadow
    // pages the application deregistered: they move back on its threads.
    ffcore::mr::progress_thread();
    let mut waiter = match ffcore::wake::Waiter::new() {
        Ok(w) => w,
        Err(e) => {
            log::error!("ffverbs: no waiter: {e}");
            return;
        }
    };
    let mut calls_seen = dev.app_calls();
    let mut last_alive = Instant::now();
    while !dev.stop.load(std::sync::atomic::Ordering::Acquire) {
        // Before looking for work: a kick after this ends the sleep below.
        let kicks = dev.kicks();
        if last_alive.elapsed() > ALIVE_EVERY {
            dev.watch_router();
            if let Ok(mut e) = dev.engine.try_lock() {
                e.check_alive(&dev);
                last_alive = Instant::now();
            }
        }
        if dev.progress() {
            std::thread::yield_now();
            continue;
        }
        // The application called in since we last looked: it drives
        // progress itself; nap instead of sleeping on the connections,
        // unless it waits for a completion event (it stops calling in).
        let calls = dev.app_calls();
        if calls != calls_seen {
            calls_seen = calls;
            if !dev.awaits_event() {
                dev.nap(APP_NAP, kicks);
                continue;
            }
        }
        // An application thread waiting for a completion event sleeps on
        // the words itself (see `wait_event`): stay off them until kicked,
        // or while it is likely to come back for the next event.
        if dev.app_waiters.load(Ordering::SeqCst) > 0 {
            dev.parked.store(true, Ordering::SeqCst);
            if dev.app_waiters.load(Ordering::SeqCst) > 0 {
                dev.nap(SLEEP_MAX, kicks);
            }
            dev.parked.store(false, Ordering::SeqCst);
            continue;
        }
        if dev.waits_directly() {
            dev.nap(APP_NAP, kicks);
            continue;
        }
        let Some(_sleeper) = dev.try_sleeper() else {
            dev.nap(APP_NAP, kicks);
            continue;
        };
        if dev.app_waiters.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let words = match dev.engine.lock() {
            Ok(mut e) => e.arm(),
            Err(_) => return,
        };
        let Some(mut words) = words else { continue };
        words.push(dev.kick_word(kicks));
        // Up to futex_waitv's 128 words this thread sleeps on them itself
        // (a peer's wake-up reaches it directly); beyond, the waiter's
        // helper threads do and wake it through their eventfd.
        if words.len() <= ffcore::futex::WAITV_MAX {
            let _ = ffcore::wake::sleep_on(&words, SLEEP_MAX);
            continue;
        }
        if waiter.arm(words).is_err() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut fd = libc::pollfd { fd: waiter.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on our stack.
        unsafe { libc::poll(&mut fd, 1, SLEEP_MAX.as_millis() as libc::c_int) };
        waiter.disarm();
        waiter.drain();
    }
}

/// How [`wait_event`] ended.
pub enum EventWait {
    /// An event is due on the channel.
    Ready,
    /// Another application thread sleeps on the connections' words, or
    /// there are more than one `futex_waitv` takes: block on the
    /// channel's descriptor (that thread, or the service thread, posts).
    Blocked,
    /// A signal interrupted the sleep (as it does a `read`).
    Interrupted,
}

/// `ibv_get_cq_event` on a blocking channel. Left to the service thread,
/// an event costs two wake-ups in a row: the service thread's, woken by
/// the peer on a connection's word, which moves the data and writes the
/// channel's descriptor, then the application's, blocked on it. Here the
/// application thread takes the words over (the service thread stays off
/// them while it does), sleeps on them and on the channel, and moves the
/// data itself when woken: one wake-up.
pub fn wait_event(dev: &Device, chan: &Channel) -> EventWait {
    if chan.ready() {
        return EventWait::Ready;
    }
    dev.app_waiters.fetch_add(1, Ordering::SeqCst);
    let done = |r: EventWait| {
        // Blocked: this thread goes on to block on the descriptor, and
        // needs the service thread (or the thread holding the words).
        if !matches!(r, EventWait::Blocked) {
            dev.waited_directly(DIRECT_GRACE);
        }
        dev.app_waiters.fetch_sub(1, Ordering::SeqCst);
        // The service thread takes the words back unless we come back
        // within DIRECT_GRACE (one-sided operations need it when the
        // application stops calling in).
        if dev.parked.load(Ordering::SeqCst) {
            dev.kick();
        }
        r
    };
    let sleeper = match dev.try_sleeper() {
        Some(g) => Some(g),
        None if dev.app_sleeps.load(Ordering::SeqCst) => None,
        None => {
            // The service thread sleeps on them: kicked, it lets go.
            dev.kick();
            let t = Instant::now();
            loop {
                if let Some(g) = dev.try_sleeper() {
                    break Some(g);
                }
                if t.elapsed() > HANDOVER_MAX {
                    break None;
                }
                std::thread::yield_now();
            }
        }
    };
    let Some(_sleeper) = sleeper else { return done(EventWait::Blocked) };
    dev.app_sleeps.store(true, Ordering::SeqCst);
    let r = loop {
        let kicks = dev.kicks();
        let seen = chan.posted();
        if chan.ready() {
            break EventWait::Ready;
        }
        if dev.progress() {
            continue;
        }
        let words = match dev.engine.lock() {
            Ok(mut e) => e.arm(),
            Err(_) => break EventWait::Blocked,
        };
        let Some(mut words) = words else { continue };
        if words.len() + 2 > ffcore::futex::WAITV_MAX {
            for w in &words {
                w.cancel();
            }
            break EventWait::Blocked;
        }
        words.push(dev.kick_word(kicks));
        words.push(chan.word(seen));
        let woken = ffcore::wake::sleep_on(&words, SLEEP_MAX);
        chan.woke();
        if matches!(woken, Ok(ffcore::futex::Woken::Interrupted)) {
            break EventWait::Interrupted;
        }
    };
    dev.app_sleeps.store(false, Ordering::SeqCst);
    drop(_sleeper);
    done(r)
}

/// How long [`wait_event`] waits for the service thread to let go of the
/// connections' words (it does within its wake-up).
const HANDOVER_MAX: Duration = Duration::from_millis(1);
/// How long after an application thread's [`wait_event`] the service
/// thread leaves the words to it: an event loop is back within
/// microseconds, and the words then need not change hands.
const DIRECT_GRACE: Duration = Duration::from_millis(1);
