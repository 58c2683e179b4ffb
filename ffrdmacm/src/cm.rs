//! The connection manager's core: event channels, ids and their states,
//! and one engine thread per process that serves the ids' TCP sockets.
//!
//! An id the application holds is an [`IdBox`]: the C `rdma_cm_id` it sees
//! (first, so the pointer is the box's) and an [`Id`] with the state. A
//! channel is a [`Channel`]: the C `rdma_event_channel`, whose `fd` is an
//! eventfd (semaphore mode) counting the events queued, so an application
//! can poll it, make it non-blocking, or block in `rdma_get_cm_event`.
//!
//! Sockets: a listening id owns a listening TCP socket on its bound
//! address; an active id connects one to its destination at
//! `rdma_connect`; the engine accepts and reads them (never blocking: a
//! peer that sends half a message holds only its own buffer, and every
//! phase that waits on a peer has a deadline), and the application's calls
//! write them (a few small messages per connection).
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::qp;
use crate::sys::*;
use crate::wire::{Conn, Msg, BODY_MAX, HEADER};

/// How long an accepted connection may take to send its REQ.
const REQ_WAIT: Duration = Duration::from_secs(5);
/// How long an active side waits for the REP (the passive application
/// creates its queue pair and resources before it accepts).
const REP_WAIT: Duration = Duration::from_secs(20);
/// How long a passive side waits for the RTU after its REP.
const RTU_WAIT: Duration = Duration::from_secs(10);
/// How long a disconnect waits for the peer's DREP.
const DREP_WAIT: Duration = Duration::from_secs(2);
/// IB CM reject reasons, which applications print: the consumer's reject,
/// and nobody listening (`IB_CM_REJ_INVALID_SERVICE_ID`).
pub const REJ_CONSUMER: i32 = 28;
pub const REJ_NO_LISTENER: i32 = 8;
/// Most requests a listener holds that the application has not accepted
/// or rejected yet, whatever backlog it asks; more are rejected.
pub const BACKLOG_MAX: usize = 1024;
/// Most accepted TCP connections a listener holds that have not sent
/// their REQ yet (each for at most [`REQ_WAIT`]); more are closed at once.
/// Apart from the backlog: idle connections do not keep requests out.
pub const INCOMING_MAX: usize = 256;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event channel; the application's pointer is `&raw`.
#[repr(C)]
pub struct Channel {
    pub raw: rdma_event_channel,
    efd: OwnedFd,
    queue: Mutex<VecDeque<Box<EventBox>>>,
}

/// An event; the application's pointer is `&ev`. The private data it
/// points to lives in the box.
#[repr(C)]
pub struct EventBox {
    pub ev: rdma_cm_event,
    private: Vec<u8>,
    /// The id whose count of unacknowledged events this one is in (the
    /// listener's for a CONNECT_REQUEST, as librdmacm counts).
    pub owner: Arc<Id>,
}

impl Channel {
    pub fn new() -> std::io::Result<Box<Channel>> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd of ours.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Box::new(Channel { raw: rdma_event_channel { fd }, efd, queue: Mutex::new(VecDeque::new()) }))
    }

    fn push(&self, e: Box<EventBox>) {
        *lock(&e.owner.unacked) += 1;
        lock(&self.queue).push_back(e);
        let one = 1u64;
        // SAFETY: 8 bytes to our eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    /// The next event: blocks unless the application made the fd
    /// non-blocking (then `EAGAIN`).
    pub fn get(&self) -> Result<Box<EventBox>, i32> {
        loop {
            let mut n = 0u64;
            // SAFETY: 8 bytes into n.
            let r = unsafe { libc::read(self.efd.as_raw_fd(), &mut n as *mut u64 as *mut _, 8) };
            if r < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            // None: a destroyed id's event was taken out meanwhile.
            if let Some(e) = lock(&self.queue).pop_front() {
                return Ok(e);
            }
        }
    }

    /// Takes out the events of `id` not yet handed out (it is being
    /// destroyed), as the kernel's rdma_cm does; returns the ids of the
    /// connection requests among them (the application never saw them).
    fn drop_events_of(&self, id: &Arc<Id>) -> Vec<usize> {
        let mut q = lock(&self.queue);
        let before = q.len();
        let me = id.raw.load(Ordering::Relaxed);
        let mut gone = Vec::new();
        let mut requests = Vec::new();
        q.retain_mut(|e| {
            let mine = Arc::ptr_eq(&e.owner, id) || e.ev.id as usize == me;
            if mine {
                gone.push(e.owner.clone());
                if e.ev.event == RDMA_CM_EVENT_CONNECT_REQUEST && e.ev.id as usize != me {
                    requests.push(e.ev.id as usize);
                }
            }
            !mine
        });
        for _ in 0..before - q.len() {
            let mut n = 0u64;
            // SAFETY: a non-blocking read of 8 bytes; EAGAIN (a reader
            // took the count and will find the queue emptier) is fine.
            unsafe {
                let fl = libc::fcntl(self.efd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(self.efd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
                libc::read(self.efd.as_raw_fd(), &mut n as *mut u64 as *mut _, 8);
                libc::fcntl(self.efd.as_raw_fd(), libc::F_SETFL, fl);
            }
        }
        drop(q);
        for o in gone {
            o.acked();
        }
        requests
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Where an id is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Bound,
    Listening,
    AddrResolved,
    RouteResolved,
    /// Active: the TCP connect is under way (the REQ goes when it is up).
    Connecting,
    /// Active: REQ sent, waiting for REP or REJ.
    ReqSent,
    /// Active without a queue pair of ours: REP came, waiting for
    /// `rdma_establish`.
    Responded,
    /// Passive, not yet shown to the application: waiting for the REQ.
    Incoming,
    /// Passive: CONNECT_REQUEST reported, waiting for accept or reject.
    Requested,
    /// Passive: REP sent, waiting for the RTU.
    RepSent,
    Connected,
    /// `rdma_disconnect` sent DREQ, waiting for DREP.
    Disconnecting,
    /// Over: disconnected, rejected, unreachable or failed.
    Done,
}

/// An id's state (behind [`Id::st`]).
pub struct IdState {
    pub phase: Phase,
    pub sock: Option<OwnedFd>,
    rbuf: Vec<u8>,
    deadline: Option<Instant>,
    /// REQ to send once the TCP connect is up.
    pending_req: Option<Conn>,
    /// What we said (REQ or REP) and what the peer said.
    pub local: Conn,
    pub peer: Option<Conn>,
    pub src: libc::sockaddr_storage,
    pub dst: libc::sockaddr_storage,
    /// The queue pair `rdma_create_qp` made (0: none; the library moves
    /// it through INIT, RTR, RTS and ERR).
    pub qp: usize,
    /// A listener's requests not yet accepted or rejected, and its
    /// connections that have not sent their REQ yet.
    pub pending_children: usize,
    pub incoming: usize,
    pub backlog: usize,
    /// The listener a child came from (its count of pending children).
    pub parent: Option<Arc<Id>>,
    /// rdma_create_ep on a passive address: what each request's queue pair
    /// is made with (`rdma_get_request`).
    pub ep_attr: Option<EpAttr>,
    /// The CQs (and their channels) rdma_create_qp made for the id.
    pub own_cqs: Vec<(usize, usize)>,
    /// Whether a DISCONNECTED (or other final event) was reported.
    final_reported: bool,
    /// The ff0 context the application's id points at (`verbs`; 0: none
    /// yet): its removal is reported to the id ([`device_removed`]).
    pub dev: usize,
    /// A UD id (`RDMA_PS_UDP`, `RDMA_PS_IPOIB`): REQ and REP only tell
    /// each side the other's queue pair (IB's SIDR); no connection stays.
    pub ud: bool,
}

/// What `rdma_create_ep` was given for a passive id's queue pairs.
#[derive(Clone, Copy)]
pub struct EpAttr {
    pub attr: ibv_qp_init_attr,
    pub pd: usize,
}

// SAFETY: the pointers in it (CQs, SRQ, the application's context) are
// the application's, only passed back to libibverbs on its own calls.
unsafe impl Send for EpAttr {}

/// An id: state, and what the engine needs to report its events.
pub struct Id {
    pub st: Mutex<IdState>,
    /// Events reported and not yet acknowledged (after `st` when both are
    /// held).
    unacked: Mutex<usize>,
    cv: Condvar,
    /// The application's `rdma_cm_id` (its [`IdBox`]).
    pub raw: AtomicUsize,
    /// Its channel (a [`Channel`] the application destroys only after its
    /// ids).
    pub channel: AtomicUsize,
}

impl IdState {
    /// An id's state before anything happened to it.
    fn new(ud: bool) -> IdState {
        IdState {
            phase: Phase::Idle,
            sock: None,
            rbuf: Vec::new(),
            deadline: None,
            pending_req: None,
            local: Conn::default(),
            peer: None,
            // SAFETY: all-zero sockaddr_storage is AF_UNSPEC.
            src: unsafe { std::mem::zeroed() },
            dst: unsafe { std::mem::zeroed() },
            qp: 0,
            pending_children: 0,
            incoming: 0,
            backlog: 0,
            parent: None,
            ep_attr: None,
            own_cqs: Vec::new(),
            final_reported: false,
            dev: 0,
            ud,
        }
    }
}

impl Id {
    /// `channel`: the [`Channel`] its events go to.
    fn new(st: IdState, channel: usize) -> Arc<Id> {
        Arc::new(Id { st: Mutex::new(st), unacked: Mutex::new(0), cv: Condvar::new(), raw: AtomicUsize::new(0), channel: AtomicUsize::new(channel) })
    }

    fn acked(&self) {
        let mut n = lock(&self.unacked);
        *n = n.saturating_sub(1);
        self.cv.notify_all();
    }

    /// Called with the event handed back.
    pub fn ack(&self) {
        self.acked();
    }

    /// Waits until every event of this id was acknowledged, at most
    /// `limit`; whether they were.
    pub fn wait_acked(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut n = lock(&self.unacked);
        while *n > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self.cv.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn channel(&self) -> &Channel {
        // SAFETY: an id's channel outlives it (rdma_destroy_event_channel
        // refuses a channel with ids, see abi.rs).
        unsafe { &*(self.channel.load(Ordering::Relaxed) as *const Channel) }
    }
}

/// The application's id: the C struct first.
#[repr(C)]
pub struct IdBox {
    pub raw: rdma_cm_id,
    pub id: Arc<Id>,
}

/// A new id on `channel`, boxed; the caller leaks the box to the
/// application.
pub fn new_id(channel: &Channel, context: *mut libc::c_void, ps: rdma_port_space, qp_type: ibv_qp_type) -> Box<IdBox> {
    let id = Id::new(IdState::new(qp_type == IBV_QPT_UD), channel as *const Channel as usize);
    let mut b = Box::new(IdBox { raw: rdma_cm_id::default(), id });
    b.raw.channel = &channel.raw as *const _ as *mut _;
    b.raw.context = context;
    b.raw.ps = ps;
    b.raw.qp_type = qp_type;
    b.raw.port_num = 1;
    b.id.raw.store(&b.raw as *const _ as usize, Ordering::Relaxed);
    b
}

/// What an event says of the connection.
pub enum Param<'a> {
    None,
    /// `rdma_conn_param` from what the peer said; `true`: seen from the
    /// passive side (the request's depths swapped).
    Conn(&'a Conn, bool),
    /// `rdma_ud_param`: the peer's queue pair as an address.
    Ud(&'a Conn),
}

/// Reports `event` on `id` (`owner`: whose count it is in, the id's own
/// unless a listener's CONNECT_REQUEST).
pub fn report(id: &Arc<Id>, owner: Option<&Arc<Id>>, event: rdma_cm_event_type, status: i32, param: Param) {
    let owner = owner.unwrap_or(id).clone();
    let mut e = Box::new(EventBox { ev: rdma_cm_event::default(), private: Vec::new(), owner: owner.clone() });
    e.ev.id = id.raw.load(Ordering::Relaxed) as *mut rdma_cm_id;
    if !Arc::ptr_eq(&owner, id) {
        e.ev.listen_id = owner.raw.load(Ordering::Relaxed) as *mut rdma_cm_id;
    }
    e.ev.event = event;
    e.ev.status = status;
    if let Param::Ud(c) = param {
        e.private = c.private.clone();
        // SAFETY: writing the ud member of a zeroed union.
        let p = unsafe { &mut e.ev.param.ud };
        p.private_data = if e.private.is_empty() { std::ptr::null() } else { e.private.as_ptr() as *const _ };
        p.private_data_len = e.private.len() as u8;
        p.ah_attr = ibv_ah_attr { is_global: 1, port_num: 1, ..Default::default() };
        p.ah_attr.grh.dgid.raw = c.gid;
        p.ah_attr.grh.hop_limit = 1;
        p.qp_num = c.qp_num;
        p.qkey = c.qkey;
    } else if let Param::Conn(c, swap) = param {
        e.private = c.private.clone();
        // SAFETY: writing the conn member of a zeroed union.
        let p = unsafe { &mut e.ev.param.conn };
        p.private_data = if e.private.is_empty() { std::ptr::null() } else { e.private.as_ptr() as *const _ };
        p.private_data_len = e.private.len() as u8;
        // The passive side sees the request from its own end.
        (p.responder_resources, p.initiator_depth) =
            if swap { (c.initiator_depth, c.responder_resources) } else { (c.responder_resources, c.initiator_depth) };
        p.flow_control = c.flow_control;
        p.retry_count = c.retry_count;
        p.rnr_retry_count = c.rnr_retry_count;
        p.srq = c.srq;
        p.qp_num = c.qp_num;
    }
    id.channel().push(e);
}

/// The engine: one thread per process polling every id's socket.
struct Engine {
    wake: OwnedFd,
    socks: Mutex<HashMap<RawFd, Arc<Id>>>,
}

fn engine() -> &'static Engine {
    static E: OnceLock<&'static Engine> = OnceLock::new();
    E.get_or_init(|| {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd of ours.
        let e: &'static Engine = Box::leak(Box::new(Engine { wake: unsafe { OwnedFd::from_raw_fd(fd) }, socks: Mutex::new(HashMap::new()) }));
        std::thread::Builder::new().name("ffrdmacm".into()).spawn(move || run(e)).expect("the connection manager's thread");
        e
    })
}

fn kick() {
    let one = 1u64;
    // SAFETY: 8 bytes to our eventfd.
    unsafe { libc::write(engine().wake.as_raw_fd(), &one as *const u64 as *const _, 8) };
}

/// The engine serves `id`'s socket from now on.
pub fn watch(fd: RawFd, id: &Arc<Id>) {
    lock(&engine().socks).insert(fd, id.clone());
    kick();
}

/// Closes an id's socket (the engine forgets it first).
pub fn close_sock(st: &mut IdState) {
    if let Some(s) = st.sock.take() {
        lock(&engine().socks).remove(&s.as_raw_fd());
        kick();
    }
}

/// Sends `m` on `st`'s socket without blocking (a few small messages per
/// connection always fit the socket buffer; a peer that never reads makes
/// this fail, not wait).
pub fn send(st: &IdState, m: &Msg) -> Result<(), i32> {
    let Some(s) = &st.sock else { return Err(libc::ENOTCONN) };
    let b = m.encode();
    // SAFETY: b is valid for its length.
    let n = unsafe { libc::send(s.as_raw_fd(), b.as_ptr() as *const _, b.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n == b.len() as isize {
        Ok(())
    } else if n < 0 {
        Err(errno())
    } else {
        Err(libc::EAGAIN)
    }
}

/// The engine's longest sleep: it looks whether ff0 went away each time
/// it wakes (a look is a lock and a load).
const DEVICE_EVERY: Duration = Duration::from_millis(500);

fn run(e: &'static Engine) {
    loop {
        let snapshot: Vec<(RawFd, Arc<Id>)> = lock(&e.socks).iter().map(|(f, i)| (*f, i.clone())).collect();
        let mut fds = vec![libc::pollfd { fd: e.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        let now = Instant::now();
        let mut timeout = DEVICE_EVERY;
        for (fd, id) in &snapshot {
            let st = lock(&id.st);
            let events = if st.phase == Phase::Connecting { libc::POLLOUT } else { libc::POLLIN };
            if let Some(d) = st.deadline {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            fds.push(libc::pollfd { fd: *fd, events, revents: 0 });
        }
        // SAFETY: fds is a valid array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis().max(1) as i32) };
        if n < 0 && errno() != libc::EINTR {
            log::warn!("ffrdmacm: poll: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(10));
        }
        if fds[0].revents != 0 {
            let mut x = 0u64;
            // SAFETY: 8 bytes into x.
            unsafe { libc::read(e.wake.as_raw_fd(), &mut x as *mut u64 as *mut _, 8) };
        }
        for (p, (fd, id)) in fds[1..].iter().zip(&snapshot) {
            if p.revents != 0 {
                serve(id, *fd);
            }
        }
        let now = Instant::now();
        for (_, id) in &snapshot {
            expire(id, now);
        }
        if let Some(ctx) = qp::gone() {
            device_removed(ctx);
        }
    }
}

/// ff0's context `ctx` went away (its router did): every id of the
/// application's attached to it, that is not over, gets
/// `RDMA_CM_EVENT_DEVICE_REMOVAL` once, as from a NIC removed under the
/// kernel's rdma_cm, and is over (its connection manager's connection
/// closed, so the peer learns it too; its queue pair in ERR). The
/// application destroys them; ids it makes from now on open ff0 anew.
fn device_removed(ctx: usize) {
    let mut n = 0;
    for id in crate::abi::ids() {
        let mut st = lock(&id.st);
        if st.dev != ctx || st.phase == Phase::Done {
            continue;
        }
        close_sock(&mut st);
        settle_child(&mut st);
        st.phase = Phase::Done;
        st.deadline = None;
        st.final_reported = true;
        qp::to_err(st.qp);
        report(&id, None, RDMA_CM_EVENT_DEVICE_REMOVAL, 0, Param::None);
        n += 1;
    }
    log::warn!("ffrdmacm: ff0 went away (its router did): RDMA_CM_EVENT_DEVICE_REMOVAL to {n} id(s); ids made from now on open ff0 anew");
}

/// The socket of `id` has something (or failed).
fn serve(id: &Arc<Id>, fd: RawFd) {
    let mut st = lock(&id.st);
    if st.sock.as_ref().map(|s| s.as_raw_fd()) != Some(fd) {
        return; // closed meanwhile
    }
    match st.phase {
        Phase::Listening => accept_all(id, &mut st, fd),
        Phase::Connecting => {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR into an int.
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut _, &mut len) };
            if err != 0 {
                return connect_failed(id, &mut st, err);
            }
            let req = st.pending_req.take().unwrap_or_default();
            if let Err(err) = send(&st, &Msg::Req(req)) {
                return connect_failed(id, &mut st, err);
            }
            st.phase = Phase::ReqSent;
            st.deadline = Some(Instant::now() + REP_WAIT);
        }
        _ => read_msgs(id, &mut st, fd),
    }
}

fn connect_failed(id: &Arc<Id>, st: &mut IdState, err: i32) {
    close_sock(st);
    st.phase = Phase::Done;
    st.deadline = None;
    qp::to_err(st.qp);
    if err == libc::ECONNREFUSED {
        // Nobody listens there: as a NIC's CM answers an unknown service.
        report(id, None, RDMA_CM_EVENT_REJECTED, REJ_NO_LISTENER, Param::None);
    } else {
        report(id, None, RDMA_CM_EVENT_UNREACHABLE, -err, Param::None);
    }
}

fn accept_all(listener: &Arc<Id>, st: &mut IdState, fd: RawFd) {
    loop {
        // SAFETY: accept4 without an address.
        let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
        if c < 0 {
            return;
        }
        // SAFETY: a fresh fd of ours.
        let sock = unsafe { OwnedFd::from_raw_fd(c) };
        if st.incoming >= INCOMING_MAX {
            log::info!("ffrdmacm: a listener holds {INCOMING_MAX} connections that sent no request: one more closed");
            continue;
        }
        st.incoming += 1;
        let mut cs = IdState::new(st.ud);
        (cs.phase, cs.sock, cs.deadline) = (Phase::Incoming, Some(sock), Some(Instant::now() + REQ_WAIT));
        (cs.src, cs.dst, cs.parent) = (st.src, st.dst, Some(listener.clone()));
        let child = Id::new(cs, listener.channel.load(Ordering::Relaxed));
        lock(&engine().socks).insert(c, child);
    }
}

/// A child leaves its listener's count: of connections without a request
/// (phase Incoming), else of requests (accepted, rejected or gone).
pub fn settle_child(st: &mut IdState) {
    if let Some(p) = st.parent.take() {
        let mut ps = lock(&p.st);
        if st.phase == Phase::Incoming {
            ps.incoming = ps.incoming.saturating_sub(1);
        } else {
            ps.pending_children = ps.pending_children.saturating_sub(1);
        }
    }
}

fn read_msgs(id: &Arc<Id>, st: &mut IdState, fd: RawFd) {
    let mut buf = [0u8; HEADER + BODY_MAX];
    // Read at most one message's worth beyond what is buffered: a peer
    // cannot make us hold more.
    let room = (2 * (HEADER + BODY_MAX)).saturating_sub(st.rbuf.len()).min(buf.len());
    // SAFETY: reading into buf, at most its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut _, room, libc::MSG_DONTWAIT) };
    if n < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR) {
        return;
    }
    if n <= 0 {
        hangup(id, st, if n == 0 { libc::ECONNRESET } else { errno() });
        return;
    }
    st.rbuf.extend_from_slice(&buf[..n as usize]);
    loop {
        match Msg::decode(&st.rbuf) {
            Ok(None) => return,
            Err(bad) => {
                log::info!("ffrdmacm: a peer sent what is not a connection manager message ({}): connection closed", bad.0);
                hangup(id, st, libc::EPROTO);
                return;
            }
            Ok(Some((m, len))) => {
                st.rbuf.drain(..len);
                if !handle(id, st, m) {
                    return;
                }
            }
        }
    }
}

/// One message from the peer; false: the connection is over.
fn handle(id: &Arc<Id>, st: &mut IdState, m: Msg) -> bool {
    match (st.phase, m) {
        (Phase::Incoming, Msg::Req(c)) => {
            let Some(parent) = st.parent.clone() else { return false };
            let (ctx, space, qp_type) = {
                let mut ps = lock(&parent.st);
                ps.incoming = ps.incoming.saturating_sub(1);
                if ps.pending_children >= ps.backlog || ps.phase != Phase::Listening {
                    // The backlog is full (or the listener went): refused,
                    // as the application would refuse it.
                    drop(ps);
                    let _ = send(st, &Msg::Rej(Vec::new()));
                    st.parent = None;
                    close_sock(st);
                    st.phase = Phase::Done;
                    return false;
                }
                ps.pending_children += 1;
                // The child's C id takes the listener's context, port space
                // and type. SAFETY: the listener's IdBox lives while it is
                // listening, and this lock holds it there
                // (rdma_destroy_id's retire takes it before the box goes).
                let praw = parent.raw.load(Ordering::Relaxed) as *const rdma_cm_id;
                unsafe { ((*praw).context, (*praw).ps, (*praw).qp_type) }
            };
            st.deadline = None;
            st.phase = Phase::Requested;
            st.peer = Some(c.clone());
            let mut b = new_id(id.channel(), ctx, space, qp_type);
            // The engine's Id becomes the box's: swap the state in.
            let fresh = b.id.clone();
            {
                let mut guard = lock(&fresh.st);
                let fs = &mut *guard;
                std::mem::swap(fs, st);
                if let Some(s) = &fs.sock {
                    lock(&engine().socks).insert(s.as_raw_fd(), fresh.clone());
                    sock_addrs(s.as_raw_fd(), &mut fs.src, &mut fs.dst);
                }
                set_route(&mut b.raw, fs);
                qp::attach(&mut b.raw);
                fs.dev = b.raw.verbs as usize;
            }
            let raw = Box::into_raw(b);
            crate::abi::adopt_id(raw, fresh.clone());
            let param = if lock(&fresh.st).ud { Param::Ud(&c) } else { Param::Conn(&c, true) };
            report(&fresh, Some(&parent), RDMA_CM_EVENT_CONNECT_REQUEST, 0, param);
            false // this Id is spent; the fresh one reads on
        }
        (Phase::ReqSent, Msg::Rep(c)) if st.ud => {
            // The peer's queue pair as an address; nothing stays open.
            close_sock(st);
            st.phase = Phase::Done;
            st.deadline = None;
            st.peer = Some(c.clone());
            report(id, None, RDMA_CM_EVENT_ESTABLISHED, 0, Param::Ud(&c));
            false
        }
        (Phase::ReqSent, Msg::Rep(c)) => {
            st.deadline = None;
            st.peer = Some(c.clone());
            if st.qp == 0 {
                st.phase = Phase::Responded;
                report(id, None, RDMA_CM_EVENT_CONNECT_RESPONSE, 0, Param::Conn(&c, false));
                return true;
            }
            let local = st.local.clone();
            if let Err(err) = qp::to_rts(st.qp, &local, &c) {
                qp::to_err(st.qp);
                let _ = send(st, &Msg::Rej(Vec::new()));
                close_sock(st);
                st.phase = Phase::Done;
                report(id, None, RDMA_CM_EVENT_CONNECT_ERROR, -err, Param::None);
                return false;
            }
            if let Err(err) = send(st, &Msg::Rtu) {
                return hangup(id, st, err);
            }
            st.phase = Phase::Connected;
            report(id, None, RDMA_CM_EVENT_ESTABLISHED, 0, Param::Conn(&c, false));
            true
        }
        (Phase::ReqSent, Msg::Rej(p)) => {
            close_sock(st);
            st.phase = Phase::Done;
            st.deadline = None;
            qp::to_err(st.qp);
            let c = Conn { private: p, ..Conn::default() };
            report(id, None, RDMA_CM_EVENT_REJECTED, REJ_CONSUMER, Param::Conn(&c, false));
            false
        }
        (Phase::RepSent, Msg::Rtu) => {
            st.deadline = None;
            st.phase = Phase::Connected;
            let c = Conn { private: Vec::new(), ..st.peer.clone().unwrap_or_default() };
            report(id, None, RDMA_CM_EVENT_ESTABLISHED, 0, Param::Conn(&c, true));
            true
        }
        (Phase::Connected | Phase::RepSent | Phase::Responded, Msg::Dreq) => {
            let _ = send(st, &Msg::Drep);
            disconnected(id, st);
            false
        }
        (Phase::Disconnecting, Msg::Drep | Msg::Dreq) => {
            let _ = send(st, &Msg::Drep);
            disconnected(id, st);
            false
        }
        (phase, m) => {
            log::info!("ffrdmacm: a peer sent {m:?} in phase {phase:?}: connection closed");
            hangup(id, st, libc::EPROTO)
        }
    }
}

/// The connection is over: DISCONNECTED, once.
fn disconnected(id: &Arc<Id>, st: &mut IdState) {
    close_sock(st);
    st.phase = Phase::Done;
    st.deadline = None;
    if !st.final_reported {
        st.final_reported = true;
        report(id, None, RDMA_CM_EVENT_DISCONNECTED, 0, Param::None);
    }
}

/// The peer closed, or broke the protocol (`err`); false.
fn hangup(id: &Arc<Id>, st: &mut IdState, err: i32) -> bool {
    match st.phase {
        Phase::Incoming => {
            close_sock(st);
            settle_child(st);
            st.phase = Phase::Done;
        }
        Phase::ReqSent | Phase::Connecting => {
            close_sock(st);
            st.phase = Phase::Done;
            qp::to_err(st.qp);
            report(id, None, RDMA_CM_EVENT_UNREACHABLE, -err, Param::None);
        }
        Phase::Requested | Phase::RepSent => {
            close_sock(st);
            st.phase = Phase::Done;
            qp::to_err(st.qp);
            report(id, None, RDMA_CM_EVENT_CONNECT_ERROR, -err, Param::None);
        }
        Phase::Connected | Phase::Responded | Phase::Disconnecting => disconnected(id, st),
        _ => close_sock(st),
    }
    false
}

fn expire(id: &Arc<Id>, now: Instant) {
    let mut st = lock(&id.st);
    if st.deadline.is_none_or(|d| d > now) {
        return;
    }
    st.deadline = None;
    match st.phase {
        Phase::Disconnecting => disconnected(id, &mut st),
        _ => {
            hangup(id, &mut st, libc::ETIMEDOUT);
        }
    }
}

/// `rdma_connect`: a TCP connection to the destination, the REQ once it
/// is up (the engine reports ESTABLISHED, REJECTED or UNREACHABLE).
pub fn connect(id: &Arc<Id>, req: Conn) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if !matches!(st.phase, Phase::AddrResolved | Phase::RouteResolved) {
        return Err(libc::EINVAL);
    }
    // A socket rdma_bind_addr made, or a new one.
    let sock = match st.sock.take() {
        Some(s) => s,
        None => new_socket(st.dst.ss_family as i32)?,
    };
    let fd = sock.as_raw_fd();
    // SAFETY: dst is a sockaddr of its family's length.
    let r = unsafe { libc::connect(fd, &st.dst as *const _ as *const _, sa_len(&st.dst)) };
    if r < 0 && errno() != libc::EINPROGRESS {
        // Reported as an event, as when the refusal comes later.
        let err = errno();
        st.sock = Some(sock);
        connect_failed(id, &mut st, err);
        return Ok(());
    }
    let mut dummy = st.dst;
    sock_addrs(fd, &mut st.src, &mut dummy);
    st.local = req.clone();
    st.pending_req = Some(req);
    st.phase = Phase::Connecting;
    st.deadline = Some(Instant::now() + REP_WAIT);
    st.sock = Some(sock);
    drop(st);
    watch(fd, id);
    Ok(())
}

fn new_socket(family: i32) -> Result<OwnedFd, i32> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh fd of ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: int options.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const _, 4);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, 4);
    }
    Ok(sock)
}

/// `rdma_bind_addr`: a TCP socket bound to `addr` (port 0: the kernel
/// picks one), which holds the port as an rdma_cm port; `rdma_listen`
/// listens on it, `rdma_connect` connects from it.
pub fn bind(id: &Arc<Id>, addr: libc::sockaddr_storage) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::Idle {
        return Err(libc::EINVAL);
    }
    let sock = new_socket(addr.ss_family as i32)?;
    // SAFETY: addr is a sockaddr of its family's length.
    if unsafe { libc::bind(sock.as_raw_fd(), &addr as *const _ as *const _, sa_len(&addr)) } < 0 {
        return Err(errno());
    }
    let mut dummy = st.dst;
    sock_addrs(sock.as_raw_fd(), &mut st.src, &mut dummy);
    st.sock = Some(sock);
    st.phase = Phase::Bound;
    Ok(())
}

/// `rdma_resolve_addr`: nothing to resolve (the connection manager reaches
/// the destination over TCP at `rdma_connect`).
pub fn resolve(id: &Arc<Id>, dst: libc::sockaddr_storage) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if !matches!(st.phase, Phase::Idle | Phase::Bound) {
        return Err(libc::EINVAL);
    }
    if st.phase == Phase::Idle {
        st.src.ss_family = dst.ss_family;
    }
    st.dst = dst;
    st.phase = Phase::AddrResolved;
    Ok(())
}

/// `rdma_resolve_route`.
pub fn route(id: &Arc<Id>) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::AddrResolved {
        return Err(libc::EINVAL);
    }
    st.phase = Phase::RouteResolved;
    Ok(())
}

/// `rdma_listen`: a listening TCP socket on the bound address.
pub fn listen(id: &Arc<Id>, backlog: i32) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::Bound {
        return Err(libc::EINVAL);
    }
    let Some(fd) = st.sock.as_ref().map(|s| s.as_raw_fd()) else { return Err(libc::EINVAL) };
    let backlog = if backlog <= 0 { BACKLOG_MAX } else { (backlog as usize).min(BACKLOG_MAX) };
    // SAFETY: plain syscall.
    if unsafe { libc::listen(fd, backlog as i32) } < 0 {
        return Err(errno());
    }
    // The port the kernel chose for port 0.
    let mut dummy = st.dst;
    sock_addrs(fd, &mut st.src, &mut dummy);
    st.backlog = backlog;
    st.phase = Phase::Listening;
    drop(st);
    watch(fd, id);
    Ok(())
}

/// `rdma_accept`: the queue pair to RTS, the REP (the engine reports
/// ESTABLISHED on the RTU).
pub fn accept(id: &Arc<Id>, rep: Conn) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::Requested {
        return Err(libc::EINVAL);
    }
    if st.ud {
        // The REP tells the requester our queue pair; that is all.
        let r = send(&st, &Msg::Rep(rep));
        settle_child(&mut st);
        close_sock(&mut st);
        st.phase = Phase::Done;
        return r;
    }
    let peer = st.peer.clone().unwrap_or_default();
    if st.qp != 0 {
        if let Err(err) = qp::to_rts(st.qp, &rep, &peer) {
            // (The routers refused the queue pairs' connection: another
            // tenant's.) The requester is told at once.
            qp::to_err(st.qp);
            let _ = send(&st, &Msg::Rej(Vec::new()));
            close_sock(&mut st);
            settle_child(&mut st);
            st.phase = Phase::Done;
            return Err(err);
        }
    }
    st.local = rep.clone();
    send(&st, &Msg::Rep(rep))?;
    settle_child(&mut st);
    st.phase = Phase::RepSent;
    st.deadline = Some(Instant::now() + RTU_WAIT);
    kick();
    Ok(())
}

/// `rdma_reject`.
pub fn reject(id: &Arc<Id>, private: Vec<u8>) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::Requested {
        return Err(libc::EINVAL);
    }
    let r = send(&st, &Msg::Rej(private));
    close_sock(&mut st);
    settle_child(&mut st);
    st.phase = Phase::Done;
    r
}

/// `rdma_establish` (active side without a queue pair of ours).
pub fn establish(id: &Arc<Id>) -> Result<(), i32> {
    let mut st = lock(&id.st);
    if st.phase != Phase::Responded {
        return Err(libc::EINVAL);
    }
    send(&st, &Msg::Rtu)?;
    st.phase = Phase::Connected;
    Ok(())
}

/// `rdma_disconnect`: the queue pair to ERR, DREQ (DISCONNECTED comes
/// with the DREP, or after [`DREP_WAIT`]).
pub fn disconnect(id: &Arc<Id>) -> Result<(), i32> {
    let mut st = lock(&id.st);
    qp::to_err(st.qp);
    match st.phase {
        Phase::Connected | Phase::RepSent | Phase::Responded => {
            if send(&st, &Msg::Dreq).is_err() {
                disconnected(id, &mut st);
                return Ok(());
            }
            st.phase = Phase::Disconnecting;
            st.deadline = Some(Instant::now() + DREP_WAIT);
            kick();
            Ok(())
        }
        Phase::Disconnecting | Phase::Done => Ok(()),
        _ => Err(libc::EINVAL),
    }
}

/// `rdma_destroy_id`'s part here: closes the socket and takes out the
/// id's events not yet handed out; returns the ids of a listener's
/// connection requests among them, for the caller to destroy too.
#[must_use]
pub fn retire(id: &Arc<Id>) -> Vec<usize> {
    let mut st = lock(&id.st);
    close_sock(&mut st);
    settle_child(&mut st);
    st.phase = Phase::Done;
    st.deadline = None;
    drop(st);
    id.channel().drop_events_of(id)
}

/// Moves `id` to `to` (`rdma_migrate_id`).
pub fn migrate(id: &Arc<Id>, to: &Channel) {
    id.channel.store(to as *const Channel as usize, Ordering::Relaxed);
}

pub fn sa_len(sa: &libc::sockaddr_storage) -> libc::socklen_t {
    match sa.ss_family as i32 {
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        _ => std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    }
}

/// The port of an IPv4 or IPv6 address (network order).
pub fn port_of(sa: &libc::sockaddr_storage) -> Option<u16> {
    // SAFETY: reading the family's own struct out of the storage.
    unsafe {
        match sa.ss_family as i32 {
            libc::AF_INET => Some((*(sa as *const _ as *const libc::sockaddr_in)).sin_port),
            libc::AF_INET6 => Some((*(sa as *const _ as *const libc::sockaddr_in6)).sin6_port),
            _ => None,
        }
    }
}

fn sock_addrs(fd: RawFd, src: &mut libc::sockaddr_storage, dst: &mut libc::sockaddr_storage) {
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: writing at most `len` bytes into the storages.
    unsafe {
        libc::getsockname(fd, src as *mut _ as *mut _, &mut len);
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, dst as *mut _ as *mut _, &mut len) < 0 {
            // A listener has no peer.
        }
    }
}

/// Copies the id's addresses into the C id's route.
pub fn set_route(raw: &mut rdma_cm_id, st: &IdState) {
    // SAFETY: rdma_addr's src/dst unions hold a sockaddr_storage's worth
    // (`struct sockaddr_storage src_storage`); copying bytes.
    unsafe {
        let n = std::mem::size_of::<libc::sockaddr_storage>();
        std::ptr::copy_nonoverlapping(&st.src as *const _ as *const u8, &mut raw.route.addr.__bindgen_anon_1 as *mut _ as *mut u8, n);
        std::ptr::copy_nonoverlapping(&st.dst as *const _ as *const u8, &mut raw.route.addr.__bindgen_anon_2 as *mut _ as *mut u8, n);
    }
}
