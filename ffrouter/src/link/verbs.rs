//! The few verbs the RDMA link needs, behind a trait: the real ones
//! ([`crate::link::rdma::ib`], libibverbs through the `ibverbs` crates) and
//! [`FakeVerbs`], an in-process model used to test the link's logic (queue
//! pair states, work requests, completions, memory registration and remote
//! access checks) on machines without an RDMA device.
//!
//! Objects are named by small integer handles; one queue pair has its own
//! send and receive completion queues.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A registered memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mr {
    pub addr: u64,
    pub len: usize,
    pub lkey: u32,
    pub rkey: u32,
}

impl Mr {
    /// Does `[addr, addr + len)` lie inside?
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        covers(self.addr, self.len, addr, len)
    }
}

/// Does `[addr, addr + len)` lie inside `[start, start + size)`?
pub fn covers(start: u64, size: usize, addr: u64, len: usize) -> bool {
    addr >= start && addr.checked_add(len as u64).is_some_and(|e| e <= start + size as u64)
}

/// What the other side needs to connect a queue pair to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub qpn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    pub psn: u32,
    /// READs this queue pair accepts in flight as a responder (its
    /// `max_dest_rd_atomic`): the peer keeps no more outstanding.
    pub reads: u8,
}

/// The most READs a queue pair keeps in flight (as initiator) and accepts
/// (as responder), whatever more the device allows: perftest uses the
/// device's maximum (128 on rxe); 64 x 64 KiB covers a slow link's round
/// trip, and hardware NICs usually allow 16.
pub const READS_MAX: u8 = 64;

impl Endpoint {
    pub const LEN: usize = 27;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.qpn.to_le_bytes());
        b[4..6].copy_from_slice(&self.lid.to_le_bytes());
        b[6..22].copy_from_slice(&self.gid);
        b[22..26].copy_from_slice(&self.psn.to_le_bytes());
        b[26] = self.reads;
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Endpoint {
        Endpoint {
            qpn: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            lid: u16::from_le_bytes(b[4..6].try_into().unwrap()),
            gid: b[6..22].try_into().unwrap(),
            psn: u32::from_le_bytes(b[22..26].try_into().unwrap()) & 0xff_ffff,
            // From the peer: at least one, at most what we would use.
            reads: b[26].clamp(1, READS_MAX),
        }
    }
}

/// Queue pair states, as in the verbs specification (the subset RC uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    Reset,
    Init,
    /// Ready to receive: needs the remote endpoint.
    Rtr,
    /// Ready to send.
    Rts,
    Error,
}

impl QpState {
    /// The transitions `modify_qp` allows.
    pub fn can_go(self, to: QpState) -> bool {
        use QpState::*;
        matches!((self, to), (Reset, Init) | (Init, Rtr) | (Rtr, Rts) | (_, Error) | (_, Reset))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// RDMA write of the gathered bytes to `remote_addr`.
    Write,
    /// RDMA write, then a receive completion at the peer carrying `imm`.
    WriteImm(u32),
    /// RDMA read of `remote_addr` into the (single) local sge.
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWr {
    pub wr_id: u64,
    pub op: Op,
    pub sges: Vec<Sge>,
    pub remote_addr: u64,
    pub rkey: u32,
    pub signaled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcKind {
    Write,
    Read,
    /// A receive consumed by the peer's WriteImm.
    RecvImm(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wc {
    pub wr_id: u64,
    pub kind: WcKind,
    /// 0 = success; otherwise the provider's status code.
    pub status: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cq {
    Send,
    Recv,
}

/// Verbs, as the RDMA link uses them. All calls are thread safe.
pub trait Verbs: Send + Sync {
    /// Registers `[addr, addr + len)` for local and remote read/write.
    fn reg_mr(&self, addr: *mut u8, len: usize) -> io::Result<Mr>;
    fn dereg_mr(&self, mr: &Mr) -> io::Result<()>;
    /// A new RC queue pair (state Reset) with its own completion queues.
    fn create_qp(&self, send_depth: u32, recv_depth: u32) -> io::Result<u32>;
    fn destroy_qp(&self, qp: u32);
    /// Our side's address for the peer.
    fn endpoint(&self, qp: u32) -> io::Result<Endpoint>;
    /// Moves the queue pair to `to`; `Rtr` needs the peer's endpoint.
    fn modify_qp(&self, qp: u32, to: QpState, remote: Option<&Endpoint>) -> io::Result<()>;
    /// READs we may keep in flight on `qp` (its `max_rd_atomic`: what our
    /// device and the peer's endpoint allow); known once it is `Rtr`.
    fn read_depth(&self, qp: u32) -> io::Result<usize>;
    fn post_send(&self, qp: u32, wr: &SendWr) -> io::Result<()>;
    /// A zero-length receive (consumed by a WriteImm).
    fn post_recv(&self, qp: u32, wr_id: u64) -> io::Result<()>;
    /// Up to `max` completions, without waiting.
    fn poll(&self, qp: u32, cq: Cq, max: usize) -> io::Result<Vec<Wc>>;
    /// Waits until `cq` may have completions or `done()` holds, at most
    /// `timeout`. `done` is looked at once the wait is armed (on a NIC:
    /// after `ibv_req_notify_cq`, whose event fires for what arrives later):
    /// what the caller waits for may be a completion another thread polled
    /// meanwhile and recorded, which no event announces any more (until
    /// 2026-12-06 such a waiter slept its whole timeout: on the fake NIC
    /// hundreds of 1 ms waits in a 12 s stream).
    fn wait(&self, qp: u32, cq: Cq, timeout: Duration, done: &dyn Fn() -> bool) -> io::Result<()>;
}

// ---------------------------------------------------------------- fake ---

/// An in-process model of an RDMA fabric: queue pairs of one `FakeVerbs`
/// (one "NIC") connect to those of another sharing the same [`Fabric`].
/// Writes and reads are memory copies, done when posted; remote keys and
/// bounds are checked like a NIC would, and a bad access moves the queue
/// pair to Error with an error completion (status 10, "remote access").
/// A NIC made with [`Fabric::slow_nic`] delays every completion of what it
/// posts (its own, and the receive completion an immediate causes at the
/// peer) by a fixed time, like a link with that one-way latency.
#[derive(Clone, Default)]
pub struct Fabric {
    inner: Arc<(Mutex<FabricState>, Condvar)>,
}

#[derive(Default)]
struct FabricState {
    next_qpn: u32,
    next_key: u32,
    /// (nic, qpn) -> queue pair.
    qps: HashMap<u32, FakeQp>,
    /// rkey -> (nic, region).
    mrs: HashMap<u32, (u32, Mr)>,
    /// Deliberately failing NICs (tests of link death).
    down: Vec<u32>,
    /// The last READs done: (remote source, local destination, bytes).
    reads: VecDeque<(u64, u64, usize)>,
    /// Registrations of memory starting in these ranges wait until the
    /// range is let go of ([`Fabric::hold_registrations`]), and how many
    /// wait now.
    held: Vec<std::ops::Range<u64>>,
    held_waiting: usize,
    /// Registrations made, by start address.
    made: HashMap<u64, u64>,
}

/// Registrations held back while this lives ([`Fabric::hold_registrations`]).
pub struct Held {
    fabric: Fabric,
    range: std::ops::Range<u64>,
}

impl Held {
    /// Registrations waiting for this hold (or another) to end now.
    pub fn waiting(&self) -> usize {
        self.fabric.inner.0.lock().unwrap().held_waiting
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (m, cv) = &*self.fabric.inner;
        let mut st = m.lock().unwrap();
        if let Some(i) = st.held.iter().position(|r| *r == self.range) {
            st.held.swap_remove(i);
        }
        cv.notify_all();
    }
}

/// READs [`Fabric::reads`] remembers.
const READ_LOG: usize = 4096;

struct FakeQp {
    nic: u32,
    state: QpState,
    remote: Option<u32>,
    recv_posted: VecDeque<u64>,
    /// Immediates that found no posted receive yet: delivered when one is
    /// posted (a NIC retries such "receiver not ready" sends; the link sets
    /// infinite RNR retries).
    rnr: VecDeque<(Instant, u32)>,
    /// Completions, each visible from its instant on (in order).
    send_cq: VecDeque<(Instant, Wc)>,
    recv_cq: VecDeque<(Instant, Wc)>,
    /// Completions polled so far from the send and the receive queue.
    taken: [u64; 2],
    send_depth: u32,
    recv_depth: u32,
    /// When each posted send the NIC may still be working on is done
    /// (the queue's depth counts them), and the most there ever were.
    in_flight: VecDeque<Instant>,
    peak: usize,
    /// READs posted and not yet done, the most at once, and what the
    /// peer's endpoint allows.
    reads_in_flight: VecDeque<Instant>,
    read_peak: usize,
    peer_reads: usize,
}

pub const STATUS_REMOTE_ACCESS: u32 = 10;
pub const STATUS_FLUSH: u32 = 5;

/// One fake NIC.
pub struct FakeVerbs {
    fabric: Fabric,
    nic: u32,
    /// How long after posting each operation completes (changeable: a
    /// fabric that goes quiet for seconds, as soft-RoCE retransmitting).
    delay: Mutex<Duration>,
    /// How long creating a queue pair or registering memory takes (a slow
    /// host: soft-RoCE in an emulated guest took seconds).
    setup: Duration,
    /// Bytes per second the NIC moves (None: no limit): each operation's
    /// bytes take their time on the wire after the ones posted before.
    rate: Option<f64>,
    /// When the wire is free again.
    busy: Mutex<Instant>,
    /// READs its queue pairs accept and issue at once (`READS_MAX` unless
    /// made with [`FakeVerbs::with_reads`]).
    reads: u8,
}

impl Fabric {
    pub fn nic(&self) -> FakeVerbs {
        let (m, _) = &*self.inner;
        let mut st = m.lock().unwrap();
        st.next_qpn += 1;
        FakeVerbs { fabric: self.clone(), nic: st.next_qpn, delay: Mutex::new(Duration::ZERO), setup: Duration::ZERO, rate: None, busy: Mutex::new(Instant::now()), reads: READS_MAX }
    }

    /// A NIC whose operations complete `delay` after they are posted.
    pub fn slow_nic(&self, delay: Duration) -> FakeVerbs {
        FakeVerbs { delay: Mutex::new(delay), ..self.nic() }
    }

    /// Makes every queue pair of `nic` fail (as if its host died): peers'
    /// sends complete with errors and nothing arrives any more.
    pub fn cut(&self, nic: &FakeVerbs) {
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap();
        st.down.push(nic.nic);
        let ids: Vec<u32> = st.qps.iter().filter(|(_, q)| q.nic == nic.nic).map(|(k, _)| *k).collect();
        for id in ids {
            let q = st.qps.get_mut(&id).unwrap();
            q.state = QpState::Error;
        }
        cv.notify_all();
    }

    /// Registrations of memory starting in `range` wait (as pinning a big
    /// region on a slow host does) until the returned guard is dropped.
    pub fn hold_registrations(&self, range: std::ops::Range<u64>) -> Held {
        self.inner.0.lock().unwrap().held.push(range.clone());
        Held { fabric: self.clone(), range }
    }

    /// Whether a registration of memory starting at `addr` lives now.
    pub fn registered_at(&self, addr: u64) -> bool {
        self.inner.0.lock().unwrap().mrs.values().any(|(_, m)| m.addr == addr)
    }

    /// Registrations made so far of memory starting at `addr`.
    pub fn registrations_at(&self, addr: u64) -> u64 {
        self.inner.0.lock().unwrap().made.get(&addr).copied().unwrap_or(0)
    }

    /// Live registrations (to check that everything is deregistered).
    pub fn registered(&self) -> usize {
        self.inner.0.lock().unwrap().mrs.len()
    }

    /// The most sends (WRITEs, READs, immediates) any queue pair of `nic`
    /// had in flight at once.
    pub fn send_peak(&self, nic: &FakeVerbs) -> usize {
        self.inner.0.lock().unwrap().qps.values().filter(|q| q.nic == nic.nic).map(|q| q.peak).max().unwrap_or(0)
    }

    /// The most READs any queue pair of `nic` had in flight at once.
    pub fn read_peak(&self, nic: &FakeVerbs) -> usize {
        self.inner.0.lock().unwrap().qps.values().filter(|q| q.nic == nic.nic).map(|q| q.read_peak).max().unwrap_or(0)
    }

    /// The last READs done on the fabric, oldest first: (remote source,
    /// local destination, bytes).
    pub fn reads(&self) -> Vec<(u64, u64, usize)> {
        self.inner.0.lock().unwrap().reads.iter().copied().collect()
    }
}

impl FakeVerbs {
    fn with<T>(&self, f: impl FnOnce(&mut FabricState) -> io::Result<T>) -> io::Result<T> {
        let (m, cv) = &*self.fabric.inner;
        let r = f(&mut m.lock().unwrap());
        cv.notify_all();
        r
    }

    pub fn id(&self) -> u32 {
        self.nic
    }

    /// The fabric this NIC is on.
    pub fn fabric(&self) -> Fabric {
        self.fabric.clone()
    }

    /// From now on, operations posted complete `d` after they are posted.
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    /// The NIC moves `bytes_per_s` (its operations' bytes, READs included,
    /// one after the other), on top of the per-operation delay.
    pub fn with_rate(mut self, bytes_per_s: f64) -> FakeVerbs {
        self.rate = Some(bytes_per_s);
        self
    }

    /// Its queue pairs accept and issue at most `n` READs at once (a NIC
    /// with a smaller READ depth; at least 1).
    pub fn with_reads(mut self, n: u8) -> FakeVerbs {
        self.reads = n.max(1);
        self
    }

    /// Every queue pair creation and memory registration takes `d`.
    pub fn with_setup_delay(mut self, d: Duration) -> FakeVerbs {
        self.setup = d;
        self
    }
}

fn einval(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

impl FabricState {
    fn qp(&mut self, id: u32) -> io::Result<&mut FakeQp> {
        self.qps.get_mut(&id).ok_or_else(|| einval("no such queue pair"))
    }

    fn fail(&mut self, qp: u32, wr_id: u64, status: u32) {
        if let Some(q) = self.qps.get_mut(&qp) {
            q.state = QpState::Error;
            q.send_cq.push_back((Instant::now(), Wc { wr_id, kind: WcKind::Write, status }));
        }
    }

    fn check_remote(&self, nic: u32, rkey: u32, addr: u64, len: usize) -> bool {
        self.mrs.get(&rkey).is_some_and(|(n, m)| *n == nic && m.covers(addr, len))
    }

    fn check_local(&self, nic: u32, sge: &Sge) -> bool {
        self.mrs.values().any(|(n, m)| *n == nic && m.lkey == sge.lkey && m.covers(sge.addr, sge.len as usize))
    }
}

impl Verbs for FakeVerbs {
    fn reg_mr(&self, addr: *mut u8, len: usize) -> io::Result<Mr> {
        if addr.is_null() || len == 0 {
            return Err(einval("empty memory region"));
        }
        std::thread::sleep(self.setup);
        {
            let (m, cv) = &*self.fabric.inner;
            let mut st = m.lock().unwrap();
            let held = |st: &FabricState| st.held.iter().any(|r| r.contains(&(addr as u64)));
            if held(&st) {
                st.held_waiting += 1;
                while held(&st) {
                    st = cv.wait(st).unwrap();
                }
                st.held_waiting -= 1;
            }
        }
        self.with(|st| {
            st.next_key += 1;
            let mr = Mr { addr: addr as u64, len, lkey: st.next_key | 0x1000_0000, rkey: st.next_key };
            st.mrs.insert(mr.rkey, (self.nic, mr));
            *st.made.entry(mr.addr).or_default() += 1;
            Ok(mr)
        })
    }

    fn dereg_mr(&self, mr: &Mr) -> io::Result<()> {
        self.with(|st| match st.mrs.get(&mr.rkey) {
            Some((n, m)) if *n == self.nic && m == mr => {
                st.mrs.remove(&mr.rkey);
                Ok(())
            }
            _ => Err(einval("memory region not registered")),
        })
    }

    fn create_qp(&self, send_depth: u32, recv_depth: u32) -> io::Result<u32> {
        std::thread::sleep(self.setup);
        let nic = self.nic;
        self.with(|st| {
            st.next_qpn += 1;
            let id = st.next_qpn;
            st.qps.insert(
                id,
                FakeQp {
                    nic,
                    state: QpState::Reset,
                    remote: None,
                    recv_posted: VecDeque::new(),
                    rnr: VecDeque::new(),
                    send_cq: VecDeque::new(),
                    recv_cq: VecDeque::new(),
                    taken: [0; 2],
                    send_depth,
                    recv_depth,
                    in_flight: VecDeque::new(),
                    peak: 0,
                    reads_in_flight: VecDeque::new(),
                    read_peak: 0,
                    peer_reads: 1,
                },
            );
            Ok(id)
        })
    }

    fn destroy_qp(&self, qp: u32) {
        let _ = self.with(|st| {
            st.qps.remove(&qp);
            Ok(())
        });
    }

    fn endpoint(&self, qp: u32) -> io::Result<Endpoint> {
        self.with(|st| {
            st.qp(qp)?;
            Ok(Endpoint { qpn: qp, lid: self.nic as u16, gid: [0; 16], psn: qp * 7, reads: self.reads })
        })
    }

    fn modify_qp(&self, qp: u32, to: QpState, remote: Option<&Endpoint>) -> io::Result<()> {
        self.with(|st| {
            let q = st.qp(qp)?;
            if !q.state.can_go(to) {
                return Err(einval(&format!("queue pair {qp}: {:?} -> {to:?} is not a valid transition", q.state)));
            }
            if to == QpState::Rtr {
                let r = remote.ok_or_else(|| einval("RTR needs the remote endpoint"))?;
                q.remote = Some(r.qpn);
                q.peer_reads = r.reads as usize;
            }
            q.state = to;
            Ok(())
        })
    }

    fn read_depth(&self, qp: u32) -> io::Result<usize> {
        let mine = self.reads as usize;
        self.with(|st| Ok(st.qp(qp)?.peer_reads.min(mine)))
    }

    fn post_send(&self, qp: u32, wr: &SendWr) -> io::Result<()> {
        self.with(|st| {
            if st.down.contains(&self.nic) {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "device gone"));
            }
            let q = st.qp(qp)?;
            if q.state != QpState::Rts {
                return Err(einval(&format!("post_send on a queue pair in state {:?}", q.state)));
            }
            let now = Instant::now();
            q.in_flight.retain(|&due| due > now);
            if q.in_flight.len() >= q.send_depth as usize {
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, "send queue full"));
            }
            let remote = q.remote.unwrap();
            let total: usize = wr.sges.iter().map(|s| s.len as usize).sum();
            let nic = self.nic;
            if !wr.sges.iter().all(|s| st.check_local(nic, s)) {
                st.fail(qp, wr.wr_id, 4); // local protection error
                return Ok(());
            }
            let peer_ok = st.qps.get(&remote).is_some_and(|p| p.state == QpState::Rts || p.state == QpState::Rtr);
            if !peer_ok {
                // Retries exhausted: the peer is gone.
                st.fail(qp, wr.wr_id, 12);
                return Ok(());
            }
            let remote_nic = st.qps[&remote].nic;
            let mut due = Instant::now();
            if let Some(rate) = self.rate {
                let mut busy = self.busy.lock().unwrap();
                *busy = (*busy).max(due) + Duration::from_secs_f64(total as f64 / rate);
                due = *busy;
            }
            due += *self.delay.lock().unwrap();
            if total > 0 && !st.check_remote(remote_nic, wr.rkey, wr.remote_addr, total) {
                st.fail(qp, wr.wr_id, STATUS_REMOTE_ACCESS);
                return Ok(());
            }
            match wr.op {
                Op::Write | Op::WriteImm(_) => {
                    let mut at = wr.remote_addr;
                    for s in &wr.sges {
                        // SAFETY: both ranges were checked against live
                        // registrations (the model's "NIC" trusts them).
                        unsafe { std::ptr::copy(s.addr as *const u8, at as *mut u8, s.len as usize) };
                        at += s.len as u64;
                    }
                    if let Op::WriteImm(imm) = wr.op {
                        let p = st.qps.get_mut(&remote).unwrap();
                        match p.recv_posted.pop_front() {
                            Some(id) => p.recv_cq.push_back((due, Wc { wr_id: id, kind: WcKind::RecvImm(imm), status: 0 })),
                            None => p.rnr.push_back((due, imm)),
                        }
                    }
                }
                Op::Read => {
                    if wr.sges.len() != 1 {
                        return Err(einval("reads scatter into one sge here"));
                    }
                    let s = wr.sges[0];
                    // SAFETY: as above.
                    unsafe { std::ptr::copy(wr.remote_addr as *const u8, s.addr as *mut u8, s.len as usize) };
                    if st.reads.len() == READ_LOG {
                        st.reads.pop_front();
                    }
                    st.reads.push_back((wr.remote_addr, s.addr, s.len as usize));
                }
            }
            let q = st.qp(qp)?;
            q.in_flight.push_back(due);
            q.peak = q.peak.max(q.in_flight.len());
            if wr.op == Op::Read {
                q.reads_in_flight.retain(|&d| d > now);
                q.reads_in_flight.push_back(due);
                q.read_peak = q.read_peak.max(q.reads_in_flight.len());
            }
            if wr.signaled {
                let kind = if wr.op == Op::Read { WcKind::Read } else { WcKind::Write };
                q.send_cq.push_back((due, Wc { wr_id: wr.wr_id, kind, status: 0 }));
            }
            Ok(())
        })
    }

    fn post_recv(&self, qp: u32, wr_id: u64) -> io::Result<()> {
        self.with(|st| {
            let q = st.qp(qp)?;
            if q.state == QpState::Reset || q.state == QpState::Error {
                return Err(einval(&format!("post_recv on a queue pair in state {:?}", q.state)));
            }
            if q.recv_posted.len() as u32 >= q.recv_depth {
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, "receive queue full"));
            }
            match q.rnr.pop_front() {
                Some((at, imm)) => q.recv_cq.push_back((at, Wc { wr_id, kind: WcKind::RecvImm(imm), status: 0 })),
                None => q.recv_posted.push_back(wr_id),
            }
            Ok(())
        })
    }

    fn poll(&self, qp: u32, cq: Cq, max: usize) -> io::Result<Vec<Wc>> {
        self.with(|st| {
            let down = st.down.contains(&self.nic);
            let q = st.qp(qp)?;
            let src = match cq {
                Cq::Send => &mut q.send_cq,
                Cq::Recv => &mut q.recv_cq,
            };
            let now = Instant::now();
            let n = src.iter().take(max).take_while(|(at, _)| *at <= now).count();
            let mut v: Vec<Wc> = src.drain(..n).map(|(_, wc)| wc).collect();
            q.taken[cq as usize] += n as u64;
            if v.is_empty() && (down || q.state == QpState::Error) && cq == Cq::Recv {
                // A queue pair in Error flushes its receives.
                if let Some(id) = q.recv_posted.pop_front() {
                    v.push(Wc { wr_id: id, kind: WcKind::RecvImm(0), status: STATUS_FLUSH });
                }
            }
            Ok(v)
        })
    }

    fn wait(&self, qp: u32, cq: Cq, timeout: Duration, done: &dyn Fn() -> bool) -> io::Result<()> {
        let (m, cv) = &*self.fabric.inner;
        let deadline = Instant::now() + timeout;
        // "Armed": completions polled from now on end the wait, whoever
        // polls them (as a NIC's event fires for whatever arrives).
        let taken = m.lock().unwrap().qps.get(&qp).ok_or_else(|| einval("no such queue pair"))?.taken[cq as usize];
        loop {
            // Not under the fabric's lock: `done` takes the caller's, which
            // pollers hold across their poll.
            if done() {
                return Ok(());
            }
            let st = m.lock().unwrap();
            let q = st.qps.get(&qp).ok_or_else(|| einval("no such queue pair"))?;
            let first = match cq {
                Cq::Send => q.send_cq.front(),
                Cq::Recv => q.recv_cq.front(),
            };
            let now = Instant::now();
            let ready = first.is_some_and(|(at, _)| *at <= now) || (cq == Cq::Recv && q.state == QpState::Error) || q.taken[cq as usize] != taken;
            if ready || now >= deadline {
                return Ok(());
            }
            // A completion due before the deadline: wake for it.
            let until = first.map_or(deadline, |(at, _)| (*at).min(deadline));
            drop(cv.wait_timeout(st, until - now).unwrap());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(f: &Fabric) -> (FakeVerbs, u32, FakeVerbs, u32) {
        connect(f.nic(), f.nic())
    }

    /// A queue pair on each of `a` and `b`, connected to each other.
    fn connect(a: FakeVerbs, b: FakeVerbs) -> (FakeVerbs, u32, FakeVerbs, u32) {
        let (qa, qb) = (a.create_qp(8, 8).unwrap(), b.create_qp(8, 8).unwrap());
        let (ea, eb) = (a.endpoint(qa).unwrap(), b.endpoint(qb).unwrap());
        for (v, q, e) in [(&a, qa, eb), (&b, qb, ea)] {
            v.modify_qp(q, QpState::Init, None).unwrap();
            v.modify_qp(q, QpState::Rtr, Some(&e)).unwrap();
            v.modify_qp(q, QpState::Rts, None).unwrap();
        }
        (a, qa, b, qb)
    }

    #[test]
    fn queue_pair_states_must_be_walked_in_order() {
        let f = Fabric::default();
        let a = f.nic();
        let q = a.create_qp(4, 4).unwrap();
        assert!(a.modify_qp(q, QpState::Rts, None).is_err(), "Reset -> RTS");
        assert!(a.post_recv(q, 1).is_err(), "receives need INIT");
        a.modify_qp(q, QpState::Init, None).unwrap();
        a.post_recv(q, 1).unwrap();
        assert!(a.modify_qp(q, QpState::Rtr, None).is_err(), "RTR needs the peer");
        let e = a.endpoint(q).unwrap();
        assert_eq!(Endpoint::decode(&e.encode()), e);
        // A peer's READ depth is taken as at least 1 and at most READS_MAX.
        for (said, taken) in [(0, 1), (255, READS_MAX), (7, 7)] {
            let mut b = e.encode();
            b[Endpoint::LEN - 1] = said;
            assert_eq!(Endpoint::decode(&b).reads, taken);
        }
        a.modify_qp(q, QpState::Rtr, Some(&e)).unwrap();
        let wr = SendWr { wr_id: 1, op: Op::Write, sges: vec![], remote_addr: 0, rkey: 0, signaled: true };
        assert!(a.post_send(q, &wr).is_err(), "sends need RTS");
        a.modify_qp(q, QpState::Rts, None).unwrap();
        a.modify_qp(q, QpState::Error, None).unwrap();
        assert!(a.post_send(q, &wr).is_err());
    }

    #[test]
    fn writes_reads_and_immediates_move_bytes_with_keys_checked() {
        let f = Fabric::default();
        let (a, qa, b, qb) = connected(&f);
        let mut src = vec![7u8; 100];
        let mut dst = vec![0u8; 100];
        let ms = a.reg_mr(src.as_mut_ptr(), 100).unwrap();
        let md = b.reg_mr(dst.as_mut_ptr(), 100).unwrap();
        b.post_recv(qb, 55).unwrap();
        let sge = Sge { addr: ms.addr, len: 100, lkey: ms.lkey };
        a.post_send(qa, &SendWr { wr_id: 9, op: Op::WriteImm(42), sges: vec![sge], remote_addr: md.addr, rkey: md.rkey, signaled: true }).unwrap();
        assert_eq!(dst, src);
        assert_eq!(b.poll(qb, Cq::Recv, 4).unwrap(), vec![Wc { wr_id: 55, kind: WcKind::RecvImm(42), status: 0 }]);
        assert_eq!(a.poll(qa, Cq::Send, 4).unwrap(), vec![Wc { wr_id: 9, kind: WcKind::Write, status: 0 }]);
        // Read back into a fresh buffer.
        let mut back = vec![0u8; 50];
        let mb = a.reg_mr(back.as_mut_ptr(), 50).unwrap();
        let sge = Sge { addr: mb.addr, len: 50, lkey: mb.lkey };
        a.post_send(qa, &SendWr { wr_id: 10, op: Op::Read, sges: vec![sge], remote_addr: md.addr + 50, rkey: md.rkey, signaled: true }).unwrap();
        assert_eq!(back, vec![7u8; 50]);
        // Out of bounds: the queue pair breaks with a remote access error.
        a.post_send(qa, &SendWr { wr_id: 11, op: Op::Read, sges: vec![sge], remote_addr: md.addr + 60, rkey: md.rkey, signaled: true }).unwrap();
        let wc = a.poll(qa, Cq::Send, 4).unwrap();
        assert_eq!(wc.last().unwrap().status, STATUS_REMOTE_ACCESS);
        assert!(a.post_send(qa, &SendWr { wr_id: 12, op: Op::Write, sges: vec![], remote_addr: md.addr, rkey: md.rkey, signaled: true }).is_err());
        for (v, m) in [(&a, ms), (&b, md), (&a, mb)] {
            v.dereg_mr(&m).unwrap();
        }
        assert_eq!(f.registered(), 0);
    }

    /// A thread waiting on a queue wakes when another thread polls the
    /// completion it waits for (on a NIC the completion's arrival fires
    /// the event it armed), and at once when `done` says so: it never
    /// sleeps its whole timeout for what is already there.
    #[test]
    fn a_waiter_wakes_for_a_completion_another_thread_polled() {
        let f = Fabric::default();
        let (a, qa, b, _) = connect(f.slow_nic(Duration::from_millis(50)), f.nic());
        let mut buf = vec![0u8; 8];
        let m = b.reg_mr(buf.as_mut_ptr(), 8).unwrap();
        let long = Duration::from_secs(30);
        let polled = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            a.post_send(qa, &SendWr { wr_id: 1, op: Op::Write, sges: vec![], remote_addr: m.addr, rkey: m.rkey, signaled: true }).unwrap();
            // Another thread takes the completion (due in 50 ms) and
            // records it, as the link's reaper does.
            sc.spawn(|| {
                while a.poll(qa, Cq::Send, 4).unwrap().is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                polled.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let t = Instant::now();
            a.wait(qa, Cq::Send, long, &|| polled.load(std::sync::atomic::Ordering::SeqCst)).unwrap();
            assert!(t.elapsed() < long / 3, "slept {:?} for a completion another thread polled", t.elapsed());
        });
        assert!(polled.load(std::sync::atomic::Ordering::SeqCst));
        // Recorded already: no sleep at all.
        let t = Instant::now();
        a.wait(qa, Cq::Send, long, &|| true).unwrap();
        assert!(t.elapsed() < long / 3);
    }

    #[test]
    fn a_slow_nic_completes_after_its_delay_in_order() {
        let f = Fabric::default();
        let (a, qa, b, qb) = connect(f.slow_nic(Duration::from_millis(40)), f.nic());
        let mut buf = vec![0u8; 8];
        let m = b.reg_mr(buf.as_mut_ptr(), 8).unwrap();
        b.post_recv(qb, 1).unwrap();
        let t0 = Instant::now();
        for id in [10, 11] {
            a.post_send(qa, &SendWr { wr_id: id, op: Op::WriteImm(id as u32), sges: vec![], remote_addr: m.addr, rkey: m.rkey, signaled: true }).unwrap();
        }
        assert!(a.poll(qa, Cq::Send, 4).unwrap().is_empty(), "nothing completes before the delay");
        assert!(b.poll(qb, Cq::Recv, 4).unwrap().is_empty(), "nor arrives");
        a.wait(qa, Cq::Send, Duration::from_secs(5), &|| false).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(40), "{:?}", t0.elapsed());
        let ids: Vec<u64> = a.poll(qa, Cq::Send, 4).unwrap().iter().map(|w| w.wr_id).collect();
        assert_eq!(ids, vec![10, 11]);
        b.post_recv(qb, 2).unwrap();
        let got: Vec<WcKind> = b.poll(qb, Cq::Recv, 4).unwrap().iter().map(|w| w.kind).collect();
        assert_eq!(got, vec![WcKind::RecvImm(10), WcKind::RecvImm(11)], "the second found its receive late, still in order");
        b.dereg_mr(&m).unwrap();
    }

    #[test]
    fn immediates_wait_for_a_receive_and_keys_belong_to_one_nic() {
        let f = Fabric::default();
        let (a, qa, b, qb) = connected(&f);
        let mut buf = vec![0u8; 8];
        let m = b.reg_mr(buf.as_mut_ptr(), 8).unwrap();
        a.post_send(qa, &SendWr { wr_id: 1, op: Op::WriteImm(5), sges: vec![], remote_addr: m.addr, rkey: m.rkey, signaled: true }).unwrap();
        assert!(b.poll(qb, Cq::Recv, 1).unwrap().is_empty(), "no receive posted yet");
        b.post_recv(qb, 77).unwrap();
        assert_eq!(b.poll(qb, Cq::Recv, 1).unwrap()[0], Wc { wr_id: 77, kind: WcKind::RecvImm(5), status: 0 });
        // a's own registration is no key into b's memory, and b cannot
        // deregister a's region.
        let mut mine = vec![0u8; 8];
        let ma = a.reg_mr(mine.as_mut_ptr(), 8).unwrap();
        assert!(b.dereg_mr(&ma).is_err());
        let sge = Sge { addr: ma.addr, len: 8, lkey: ma.lkey };
        a.post_send(qa, &SendWr { wr_id: 2, op: Op::Write, sges: vec![sge], remote_addr: ma.addr, rkey: ma.rkey, signaled: true }).unwrap();
        let wc = a.poll(qa, Cq::Send, 4).unwrap();
        assert_eq!(wc.last().unwrap().status, STATUS_REMOTE_ACCESS);
        // A cut NIC: the peer's sends fail, its receives flush.
        b.modify_qp(qb, QpState::Error, None).unwrap();
        b.post_recv(qb, 78).unwrap_err();
    }
}
