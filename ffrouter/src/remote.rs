//! Connections between hosts: routers carry them over links.
//!
//! ```text
//!  client B ──ring B── router B ══ link (TCP or RDMA) ══ router A ──ring A── client A
//!  (connector)         plays side 1 of ring B          plays side 0 of ring A  (acceptor)
//! ```
//!
//! A handle names the router serving its listener by id and address. When a
//! client connects to a handle of another router, its router (B) makes the
//! connection file as for a local connect but plays the acceptor's side
//! itself, dials (or reuses) a link to the address in the handle, and asks
//! router A to connect to the listener. Router A checks the listener, nonce
//! and tenant as for a local connect, makes a connection file whose
//! connector's side it plays, and queues it for the listener's owner. From
//! then on each router moves bytes between its ring and the link: clients see
//! the same `Conn` as on one host.
//!
//! Per forwarded connection, a *pump* forwards what the client writes
//! (records validated by `Rx::peek`, sent straight from the ring) and returns
//! credit; a few pump workers ([`pumps`]) take turns among all connections.
//! Per link stream, one receiver thread writes incoming frames
//! straight into the destination ring (`Tx::reserve`/`commit`). Credits
//! ([`crate::wire`]) make every frame fit when it arrives, so a receiver never
//! waits on a ring and nothing is buffered beyond the rings and the link's own
//! buffers; a slow client stops its peer's sends, not the link.
//!
//! Pumps spin briefly (latency) and then sleep on the router side's futex in
//! the connection file (a worker sleeps on all its idle connections' at
//! once); receivers block on the link. Idle connections cost their worker a
//! look each every 200 ms at first, every 1.6 s once all stayed idle a few
//! seconds (`pumps::next_nap`); an idle link a PING per stream every 500 ms.
//!
//! When a link dies (the peer's host stops answering, its router sends
//! nothing for `link::SILENT_AFTER`, or its sockets or queue pairs fail),
//! every connection on it has the router's side marked closed in the shared
//! control page: clients fail their requests with `PeerClosed`.
//!
//! Here: the configuration, setting up links (dialing, accepting, the
//! handshake's stream groups) and connections (a local client's connect, a
//! peer's CONNECT), and the counters. A link as this router holds it, with
//! its receiver, control and ping threads, is [`peer`]; a forwarded
//! connection, its inbound and outbound halves, [`fwd`]; the pump workers
//! and one connection's step, [`pumps`]; request/response covers, [`cover`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use ffcore::error::ErrorCode;
use ffcore::proto::{self, NetAddr, Reply};
use ffcore::ring::{self, Layout, Rx, Tx, REC_CONT, REC_FIRST};
use ffcore::polite::{self, Polite};
use ffcore::TAG_ANY;
use ffcore::shm::{self, SharedMem};

use crate::limited;
use crate::link::auth::Keys;
use crate::link::tcp::{self, TcpLink};
use crate::link::{self, Frame, Identity, Link, Transport, ACCEPT_TIMEOUT, DIAL_TIMEOUT, PING_EVERY};
use crate::peers::PeerPolicy;
use crate::state::{Outcome, State};
use crate::wire::{self, Header};

mod cover;
mod fwd;
mod peer;
mod pumps;
use cover::*;
use fwd::*;
use peer::*;
use pumps::Pump;
pub use pumps::default_workers;

/// Connection set-up timing (debug log, target `ff_connect`): one line per
/// step of a connect to another host, named by the connecting router's
/// connection id, with the monotonic clock in microseconds (the same clock
/// for every process of a host, so two routers' lines line up).
fn trace_connect(step: &str, conn: u64) {
    if log::log_enabled!(target: "ff_connect", log::Level::Debug) {
        log::debug!(target: "ff_connect", "{step} conn={conn} us={}", monotonic_us());
    }
}

/// CLOCK_MONOTONIC in microseconds (diagnostics that line up the logs of
/// a host's processes).
fn monotonic_us() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// How long a connect to another host may take before the client is told
/// (the router answers `NotReady` meanwhile): [`CONNECT_TIMEOUT`] after the
/// request, or, while the link to that host is being set up and making
/// progress (a stream dialed, a queue pair made or connected on either
/// side), [`CONNECT_TIMEOUT`] after its last step, whichever is later; over
/// an RDMA link that is up, plus twice the link's operation timeout (the
/// CONNECT and its answer may each wait out the NIC's retransmissions);
/// never later than
/// [`CONNECT_LIMIT`] after the request. A link that cannot be set up fails
/// its connects earlier, with the reason (`DIAL_TIMEOUT` plus the RDMA
/// setup's `SETUP_LIMIT` at most).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_LIMIT: Duration = Duration::from_secs(60);
const _: () = assert!(DIAL_TIMEOUT.as_secs() + link::rdma::SETUP_LIMIT.as_secs() < CONNECT_LIMIT.as_secs());
/// A tuning knob: the environment variable `name` if it parses, else
/// `default`, read once per knob (the caller's `static`). Experiments only;
/// the defaults are what the benchmarks measured.
fn knob(cell: &'static std::sync::OnceLock<u64>, name: &str, default: u64) -> u64 {
    *cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}
/// Times a router thread found a busy process sharing its core (its
/// yields lost the core, see `ffcore::polite`) and slept instead of
/// polling: `ff_router_cpu_contended_total` in the metrics.
pub static CONTENDED: AtomicU64 = AtomicU64::new(0);

/// How long a pump spins for more work before it sleeps.
fn spin() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(knob(&K, "FF_ROUTER_SPIN_US", 20))
}
/// Frames go out in gathers of up to this many bytes or frames, straight
/// from the client's ring.
fn gather() -> usize {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    knob(&K, "FF_ROUTER_GATHER", 512 << 10) as usize
}
const GATHER_FRAMES: usize = 256;
/// What one turn of a busy connection among others hands the link
/// ([`Quantum::Turn`]): a gather unless set smaller (experiments).
fn turn_quantum() -> usize {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    (knob(&K, "FF_ROUTER_TURN", gather() as u64) as usize).clamp(1, gather())
}
/// Pump workers re-check their sleeping connections at least this often:
/// a safety net only (every event for a connection bumps its wake word),
/// which bounds what a lost wake-up could cost. A pump thread per
/// connection used to look every 20 ms: at 256 idle connections a worker
/// pool looking that often cost both routers 5.7 % of a core
/// (bench/results/scale-after-2026-12-02).
fn nap() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_millis(knob(&K, "FF_ROUTER_NAP_MS", 200).max(1))
}
/// The longest a worker naps: each look after a nap that found nothing
/// to wake doubles its nap, up to this (see `pumps::next_nap`). At 512
/// idle connections the looks every 200 ms were nearly all of both
/// routers' idle CPU, ~1.1 % of a core (bench/results/idle512-2026-12-03).
fn nap_max() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_millis(knob(&K, "FF_ROUTER_NAP_MAX_MS", 1600)).max(nap())
}

/// Router-to-router settings (the `--listen-addr` family of flags).
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub streams: usize,
    pub secret: Option<Arc<[u8]>>,
    pub transport: Transport,
    /// Ring size of connections to other hosts (smaller rings keep the
    /// forwarded bytes in cache; the link and both rings pipeline): the
    /// most a connection gets, see [`scaled_ring`].
    pub ring_size: usize,
    /// Ring bytes (per direction) of a tenant's connections to other hosts
    /// beyond which its new ones get smaller rings (`--peer-ring-budget`,
    /// [`scaled_ring`]).
    pub ring_budget: usize,
    /// Which addresses are routers this one may link with.
    pub peers: PeerPolicy,
    /// Most links at once, both directions (each costs a descriptor and a
    /// thread per stream, from the router's own reserve).
    pub max_links: usize,
    /// The RDMA device, port and GID (with `Transport::Rdma`).
    pub rdma: Option<link::rdma::gid::Choice>,
    /// Pump workers to spread connections over (`--pump-workers`; more
    /// start when each serves [`pumps::PER_WORKER`] connections).
    pub workers: usize,
}

/// The flags behind a [`Config`], as given.
pub struct Flags<'a> {
    pub listen: Option<&'a str>,
    pub advertise: Option<&'a str>,
    pub streams: usize,
    pub secret_file: Option<&'a std::path::Path>,
    pub insecure: bool,
    pub transport: &'a str,
    pub ring_size: usize,
    pub peer_networks: &'a [String],
    pub peers: &'a [String],
    /// `--rdma-device`, `--rdma-gid-index`.
    pub rdma_device: Option<&'a str>,
    pub rdma_gid_index: Option<u32>,
}

/// Most links a router keeps by default.
pub const MAX_LINKS: usize = 256;

/// Default `--peer-ring-budget`: 64 connections get 4 MiB rings.
pub const RING_BUDGET: usize = 256 << 20;

/// The smallest ring [`scaled_ring`] hands out: a pump's turn among busy
/// connections (`Quantum::Turn`, one 512 KiB gather by default), so that a
/// busy connection can fill its turn.
pub const SCALED_RING_MIN: usize = 512 << 10;

/// Ring size for a new connection to another host while the router
/// forwards `open` others of the same tenant (a budget per tenant: one
/// tenant's connections never shrink another's rings): `max`
/// (`--peer-ring-size`) while `budget / (open + 1)` is at least `max`;
/// beyond that the largest power of two not above `budget / (open + 1)`,
/// but never below [`SCALED_RING_MIN`] (or `max`, if that is smaller).
///
/// Why (issue 17): a ring that streams has every page committed, each by
/// a page fault on its first touch (on a VM whose freed memory goes back
/// to the hypervisor, a fault there too), and 512 connections streaming
/// across two emulated hosts spent their time faulting in 512 x 4 MiB
/// rings per host: 0.30-0.47x the aggregate of one connection, ~500,000
/// page faults in 3 s (bench/results/scale4-2026-12-03). Each of them
/// gets ~1/512 of the link, which a 512 KiB ring carries as well. What it
/// costs: a connection made while its tenant has many others keeps its
/// smaller ring, also when it later streams alone (1 and 4 MiB messages
/// went 2.0 GB/s with 1 MiB rings, 2.7-3.0 with 4 MiB, between emulated
/// hosts), and while all stream, those with bigger rings get somewhat
/// more of the link.
pub fn scaled_ring(max: usize, budget: usize, open: usize) -> usize {
    let share = budget / open.saturating_add(1);
    if share >= max {
        return max;
    }
    let floor = SCALED_RING_MIN.min(max);
    if share <= floor {
        return floor;
    }
    // A power of two in (floor, max): a valid ring size.
    1 << (usize::BITS - 1 - share.leading_zeros())
}

impl Config {
    /// Reads the flags; None without `--listen-addr`.
    pub fn from_flags(f: &Flags) -> Result<Option<Config>, String> {
        if !ffcore::ring::valid_ring_size(f.ring_size) {
            return Err(format!("--peer-ring-size {}: must be a power of two from 4096 to 1 GiB", f.ring_size));
        }
        let Some(listen) = f.listen else { return Ok(None) };
        let listen: SocketAddr = listen.parse().map_err(|e| format!("--listen-addr {listen}: {e}"))?;
        let advertise: SocketAddr = match f.advertise {
            Some(a) => a.parse().map_err(|e| format!("--advertise-addr {a}: {e}"))?,
            None => listen,
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(format!("--advertise-addr {advertise}: other routers cannot reach that (give the host's address)"));
        }
        let secret = match (f.secret_file, f.insecure) {
            (Some(_), true) => return Err("--peer-secret-file and --insecure-no-peer-secret contradict each other".into()),
            (None, false) => {
                return Err("--listen-addr needs --peer-secret-file (the same secret on every router of the cluster), \
                    or --insecure-no-peer-secret on a network that only routers can reach"
                    .into())
            }
            (None, true) => None,
            (Some(p), false) => Some(Arc::from(crate::read_secret("--peer-secret-file", p)?)),
        };
        // The GID must be the one of the address peers reach us at: the
        // listen address, or the advertised one when listening on any.
        let ip = if listen.ip().is_unspecified() { advertise.ip() } else { listen.ip() };
        let want = link::rdma::Want { device: f.rdma_device.map(String::from), gid_index: f.rdma_gid_index, ip: Some(ip) };
        if f.transport == "tcp" && (want.device.is_some() || want.gid_index.is_some()) {
            return Err("--rdma-device and --rdma-gid-index need --peer-transport rdma or auto".into());
        }
        let (transport, rdma) = link::select(f.transport, secret.is_some(), &want)?;
        if secret.is_none() {
            log::warn!("--insecure-no-peer-secret: links between routers are neither authenticated nor encrypted; whoever reaches {listen} is trusted as a router");
        }
        let peers = PeerPolicy::new(f.peer_networks, f.peers, advertise)?;
        Ok(Some(Config { listen, advertise, streams: f.streams, secret, transport, ring_size: f.ring_size, ring_budget: RING_BUDGET, peers, max_links: MAX_LINKS, rdma, workers: default_workers() }))
    }
}

type Key = (u64, [u8; 16], u64, u64);

/// Why a link that was up went (`ff_router_peer_link_drops_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer router broke the protocol: a bad frame, beyond its credit,
    /// answers it left unread.
    Protocol,
    /// Nothing from the peer router for `link::SILENT_AFTER`, or its host
    /// stopped answering (a timeout of the link's).
    Silent,
    /// Its connection failed or closed, sending or receiving.
    Io,
    /// This router could not go on with it (a thread, its own bookkeeping).
    Local,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Protocol, Cause::Silent, Cause::Io, Cause::Local];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Protocol => "protocol",
            Cause::Silent => "silent",
            Cause::Io => "io",
            Cause::Local => "local",
        }
    }

    fn of(e: &std::io::Error) -> Cause {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Cause::Silent
        } else {
            Cause::Io
        }
    }
}

/// What ends a receiver thread, and with it the link.
struct Fault {
    cause: Cause,
    why: String,
}

impl Fault {
    fn local(why: impl ToString) -> Fault {
        Fault { cause: Cause::Local, why: why.to_string() }
    }
}

/// A string error from a peer's frame: it broke the protocol.
impl From<String> for Fault {
    fn from(why: String) -> Fault {
        Fault { cause: Cause::Protocol, why }
    }
}

impl From<&str> for Fault {
    fn from(why: &str) -> Fault {
        why.to_string().into()
    }
}

impl From<std::io::Error> for Fault {
    fn from(e: std::io::Error) -> Fault {
        Fault { cause: Cause::of(&e), why: e.to_string() }
    }
}

/// Counters of the links between routers, for the metrics.
#[derive(Default)]
pub struct LinkCounters {
    drops: [AtomicU64; Cause::ALL.len()],
    dial_failures: AtomicU64,
}

impl LinkCounters {
    /// Links that were up and went, by cause.
    pub fn drops(&self, c: Cause) -> u64 {
        self.drops[c as usize].load(Ordering::Relaxed)
    }

    /// Dials that brought no link up.
    pub fn dial_failures(&self) -> u64 {
        self.dial_failures.load(Ordering::Relaxed)
    }
}

pub struct Remote {
    state: Arc<Mutex<State>>,
    me: Identity,
    cfg: Config,
    /// Links this router dialed, by peer address.
    out: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    /// Streams of links being accepted, by (peer router, link id).
    groups: Mutex<HashMap<([u8; 16], u64), Group>>,
    /// Connects in progress, by (client, handle).
    pending: Mutex<HashMap<Key, Pending>>,
    /// Forwarded connections by local client, over all links (a client
    /// that got data may answer on any of them: see `Peer::cover`).
    by_client: Mutex<HashMap<u64, Vec<Weak<Fwd>>>>,
    /// Links in use (both directions), for counters and tests.
    links: AtomicUsize,
    counters: LinkCounters,
    /// Incoming link handshakes under way, by source address.
    handshakes: Mutex<HashMap<IpAddr, usize>>,
    /// Links being dialed, by the tenant whose connect started them.
    dials: Mutex<HashMap<Arc<str>, usize>>,
    /// The threads that forward every connection's outgoing bytes.
    pumps: pumps::Pool,
}

/// At most this many incoming handshakes at once, this many from one
/// address (each has a thread for at most ACCEPT_TIMEOUT): whoever reaches
/// `--listen-addr` cannot make the router spawn threads without bound, nor
/// keep other routers out.
pub const MAX_HANDSHAKES: usize = 64;
const HANDSHAKES_PER_ADDR: usize = 8;
/// Links one tenant may have being dialed at once (each takes a thread for
/// up to DIAL_TIMEOUT), and connects to other hosts one client may have
/// under way.
const DIALS_PER_TENANT: usize = 4;
const PENDING_PER_CLIENT: usize = 64;
/// Bytes of answers (REFUSE, CLOSE) to a peer router's set-up frames that
/// may wait for its link: beyond, the peer sends requests without reading
/// what they cause, and its link goes (queued, they would grow without
/// bound). An honest peer reads all the time, and its requests are
/// bounded by its clients' connects under way ([`PENDING_PER_CLIENT`]),
/// each answered in about 100 bytes: 4 MiB is some 40,000 refusals unread.
/// (The control thread may hold as much again, being sent: at most 8 MiB
/// per link.)
const MAX_ANSWERS_QUEUED: usize = if cfg!(test) { 256 << 10 } else { 4 << 20 };

struct Pending {
    fwd: Arc<Fwd>,
    /// The link it waits for.
    peer: Arc<Peer>,
    since: Instant,
}

impl Pending {
    /// When the connect is given up on ([`CONNECT_TIMEOUT`]), and whether
    /// that is the hard limit ([`CONNECT_LIMIT`]).
    fn deadline(&self) -> (Instant, bool) {
        let step = *self.peer.progress.lock().unwrap();
        // Once the link is up, the CONNECT and its answer may each take
        // the transport's operation bound (a fabric retransmitting), for a
        // connect made any time after (soft-RoCE: one 25 s after the link
        // came up took over 10 s).
        let trip = self.peer.inner.lock().unwrap().link.as_ref().map_or(Duration::ZERO, |l| l.op_timeout() * 2);
        let soft = self.since.max(step) + CONNECT_TIMEOUT + trip;
        let hard = self.since + CONNECT_LIMIT;
        if soft < hard {
            (soft, false)
        } else {
            (hard, true)
        }
    }
}

struct Group {
    socks: Vec<Option<(TcpStream, Option<Keys>)>>,
    since: Instant,
}

impl Remote {
    /// The forwarding state of every connection to another host, a line
    /// each (what `ffrouter` logs on SIGUSR1).
    pub fn describe(&self) -> Vec<String> {
        let mut fs: Vec<Arc<Fwd>> = self.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).collect();
        fs.sort_by_key(|f| f.local);
        fs.iter().map(|f| f.describe()).collect()
    }

    /// Listens for other routers at `cfg.listen` and returns the service;
    /// the state learns the address to put in handles.
    pub fn start(state: Arc<Mutex<State>>, mut cfg: Config) -> std::io::Result<Arc<Remote>> {
        let listener = TcpListener::bind(cfg.listen)?;
        if cfg.advertise.port() == 0 {
            // Port 0 (tests): advertise the port the system picked.
            cfg.advertise.set_port(listener.local_addr()?.port());
        }
        let me = {
            let mut st = state.lock().unwrap();
            st.advertise = Some(NetAddr::from(cfg.advertise));
            Identity { router_id: st.router_id, secret: cfg.secret.clone() }
        };
        let workers = cfg.workers;
        let r = Arc::new(Remote {
            state,
            me,
            cfg,
            out: Mutex::default(),
            groups: Mutex::default(),
            pending: Mutex::default(),
            by_client: Mutex::default(),
            links: AtomicUsize::new(0),
            counters: LinkCounters::default(),
            handshakes: Mutex::default(),
            dials: Mutex::default(),
            pumps: pumps::Pool::new(workers),
        });
        log::info!(
            "other routers: listening on {} (advertised as {}), {} data streams per link and one for set-up, transport {:?}, {}; links with {} only; {} pump workers",
            listener.local_addr()?,
            r.cfg.advertise,
            r.cfg.streams,
            r.cfg.transport,
            if r.cfg.secret.is_some() { "peer secret required, links encrypted" } else { "NO peer secret" },
            r.cfg.peers,
            r.cfg.workers.max(1),
        );
        // Fairness diagnostics (debug log, target `ff_fair`): every 500 ms,
        // the pump workers' loads and each forwarded connection's ring
        // counters (the client's ring: head, tail; ours: head, tail),
        // credit left, stream and pump worker.
        if log::log_enabled!(target: "ff_fair", log::Level::Debug) {
            let weak = Arc::downgrade(&r);
            std::thread::Builder::new().name("fair-sample".into()).spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(r) = weak.upgrade() else { return };
                let fs: Vec<Arc<Fwd>> = r.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).collect();
                let mut line = String::new();
                for f in fs {
                    let (oh, ot, _) = f.lay.0.counters(1 - f.side);
                    let (ih, it, _) = f.lay.0.counters(f.side);
                    // Credit left to send with (u64::MAX: its pump holds `out`).
                    let left = f.out.try_lock().map_or(u64::MAX, |o| f.limit.load(Ordering::Relaxed).saturating_sub(o.charged));
                    line.push_str(&format!(" {}:{oh}:{ot}:{ih}:{it}:{left}:{}:{}", f.local, f.stream(), f.worker.load(Ordering::Relaxed) as i64));
                }
                log::debug!(target: "ff_fair", "us={} ring={} workers={:?}{line}", monotonic_us(), r.cfg.ring_size, r.pumps.loads());
            })?;
        }
        let weak = Arc::downgrade(&r);
        std::thread::Builder::new().name("peer-accept".into()).spawn(move || {
            for s in listener.incoming() {
                let Some(r) = weak.upgrade() else { return };
                match s {
                    Ok(s) => r.admit_link(s),
                    Err(e) => {
                        limited!(warn, "peer-accept", "", "accepting a peer router: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        Ok(r)
    }

    pub fn links(&self) -> usize {
        self.links.load(Ordering::Relaxed)
    }

    /// What happened to links so far (for the metrics).
    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    /// Pump worker threads started.
    pub fn pump_threads(&self) -> usize {
        self.pumps.threads()
    }

    /// A TCP connection to `--listen-addr`: handshake it on a thread of
    /// its own if its source may be a router and it gets a slot.
    fn admit_link(self: &Arc<Self>, s: TcpStream) {
        let Ok(from) = s.peer_addr() else { return };
        if !self.cfg.peers.allows(&from, true) {
            limited!(warn, "peer-refused", "", "refusing a link from {from}: not a router address ({})", self.cfg.peers);
            return;
        }
        let ip = from.ip().to_canonical();
        {
            let mut by = self.handshakes.lock().unwrap();
            let (total, mine) = (by.values().sum::<usize>(), by.get(&ip).copied().unwrap_or(0));
            if total >= MAX_HANDSHAKES || mine >= HANDSHAKES_PER_ADDR || self.links() >= self.cfg.max_links {
                limited!(warn, "peer-busy", "", "refusing a link from {from}: {mine} handshakes under way from it, {total} in all, {} links", self.links());
                return;
            }
            *by.entry(ip).or_default() += 1;
        }
        let r2 = self.clone();
        let spawned = std::thread::Builder::new().name("peer-handshake".into()).spawn(move || {
            r2.accept_stream(s, from);
            count_down(&r2.handshakes, &ip);
        });
        if spawned.is_err() {
            count_down(&self.handshakes, &ip);
        }
    }

    fn accept_stream(self: &Arc<Self>, s: TcpStream, from: SocketAddr) {
        // At most as many streams as this router's own links have: what its
        // descriptor budget reserves per link (`--peer-streams`).
        let inc = match tcp::accept_stream(s, &self.me, self.cfg.streams + 1, Instant::now() + ACCEPT_TIMEOUT) {
            Ok(i) => i,
            Err(e) => {
                limited!(warn, "handshake", "", "link handshake from {from} failed: {e}");
                return;
            }
        };
        let key = (inc.peer_id, inc.link);
        let complete = {
            let mut g = self.groups.lock().unwrap();
            g.retain(|_, v| v.since.elapsed() < Duration::from_secs(10));
            if g.len() >= MAX_HANDSHAKES && !g.contains_key(&key) {
                limited!(warn, "peer-busy", "", "link from {from}: too many links being set up; dropping it");
                return;
            }
            let e = g.entry(key).or_insert_with(|| Group { socks: (0..inc.streams).map(|_| None).collect(), since: Instant::now() });
            if e.socks.len() != inc.streams || e.socks[inc.stream].is_some() {
                limited!(warn, "handshake", "", "link from {from}: inconsistent stream numbers; dropping it");
                g.remove(&key);
                return;
            }
            e.socks[inc.stream] = Some((inc.sock, inc.keys));
            if e.socks.iter().all(Option::is_some) {
                g.remove(&key).map(|v| v.socks.into_iter().map(Option::unwrap).collect::<Vec<_>>())
            } else {
                None
            }
        };
        if let Some(socks) = complete {
            let n = socks.len();
            let link = match self.make_link(socks, format!("link from router {} at {from}", hex(&inc.peer_id[..4])), &|| ()) {
                Ok(l) => l,
                Err(e) => {
                    limited!(warn, "handshake", "", "link from {from}: {e}");
                    return;
                }
            };
            // Per peer address: a peer that makes link after link fills
            // no log.
            limited!(info, "link-up", &from.ip().to_string(), "{} is up ({n} streams)", link.describe());
            let peer = Peer::new(link.describe(), None, Arc::downgrade(self));
            let _ = peer.peer_id.set(inc.peer_id);
            peer.up(self, link);
        }
    }

    /// `progress` is called at each step of an RDMA setup.
    fn make_link(&self, socks: Vec<(TcpStream, Option<Keys>)>, what: String, progress: &dyn Fn()) -> std::io::Result<Arc<dyn Link>> {
        match self.cfg.transport {
            Transport::Tcp => Ok(Arc::new(TcpLink::new(socks, format!("tcp {what}"))?)),
            // Not with a secret (Config::from_flags refuses that).
            Transport::Rdma => {
                let dev = self.cfg.rdma.as_ref().ok_or_else(|| std::io::Error::other("RDMA transport without a device"))?;
                link::rdma::over_tcp_bootstrap(socks.into_iter().map(|(s, _)| s).collect(), format!("rdma {what}"), dev, progress)
            }
            #[cfg(test)]
            Transport::FakeRdma { delay_ms, setup_ms, kb_s } => link::rdma::over_fake(
                socks.into_iter().map(|(s, _)| s).collect(),
                format!("fake-rdma {what}"),
                Duration::from_millis(delay_ms),
                Duration::from_millis(setup_ms),
                (kb_s > 0).then(|| kb_s as f64 * 1000.0),
                progress,
            ),
        }
    }

    /// A client asks to connect to a listener of another router
    /// (`Request::ConnectRemote`). Answers at once: `NotReady` while the
    /// routers set the connection up, then the connection or the refusal.
    pub fn connect(self: &Arc<Self>, client: u64, tenant: &str, router_id: [u8; 16], addr: NetAddr, listener: u64, nonce: u64) -> Outcome {
        let key = (client, router_id, listener, nonce);
        let mut pending = self.pending.lock().unwrap();
        if let Some(p) = pending.get(&key) {
            let setup = p.fwd.setup.lock().unwrap().clone();
            match setup {
                Setup::Waiting if p.deadline().0 > Instant::now() => return Reply::NotReady.into(),
                Setup::Waiting => {
                    let waited = p.since.elapsed().as_secs();
                    let hard = p.deadline().1;
                    let f = pending.remove(&key).unwrap().fwd;
                    drop(pending);
                    f.refuse(ErrorCode::Unreachable, "");
                    self.state.lock().unwrap().abandon_out(client, f.local);
                    let a = SocketAddr::from(addr);
                    let why = if hard {
                        format!("the router at {a} did not answer within {CONNECT_LIMIT:?} (the limit, however slowly the link to it was being set up)")
                    } else {
                        format!("the router at {a} did not answer within {waited}s")
                    };
                    return err(ErrorCode::Unreachable, why);
                }
                Setup::Accepted => {
                    let f = pending.remove(&key).unwrap().fwd;
                    trace_connect("answered", f.local);
                    return Outcome {
                        reply: Reply::Connected { conn: f.local, side: 0, ring_size: f.ring, forwarded: true },
                        fd: Some(f.mem.clone()),
                        read_only: false,
                    };
                }
                Setup::Refused(code, msg) => {
                    let f = pending.remove(&key).unwrap().fwd;
                    drop(pending);
                    self.state.lock().unwrap().abandon_out(client, f.local);
                    return err(code, msg);
                }
            }
        }
        let to = SocketAddr::from(addr);
        if to == self.cfg.advertise {
            return err(ErrorCode::NotFound, "the handle names this host's router as it was before a restart (stale handle)");
        }
        if !self.cfg.peers.allows(&to, false) {
            return err(ErrorCode::PermissionDenied, format!("the handle names {to}, which is not a router address this router links with ({})", self.cfg.peers));
        }
        if pending.keys().filter(|k| k.0 == client).count() >= PENDING_PER_CLIENT {
            return err(ErrorCode::ResourceExhausted, format!("{PENDING_PER_CLIENT} connects to other hosts under way (limit)"));
        }
        drop(pending);
        let tenant: Arc<str> = tenant.into();
        let peer = match self.peer_for(to, &tenant) {
            Ok(p) => p,
            Err(o) => return o,
        };
        let made = {
            let mut st = self.state.lock().unwrap();
            let ring = scaled_ring(self.cfg.ring_size, self.cfg.ring_budget, st.forwarded(&tenant));
            st.connect_out(client, ring)
        };
        let (id, mem) = match made {
            Ok(x) => x,
            Err(o) => return o,
        };
        let regions = Regions { state: Arc::downgrade(&self.state), tenant: tenant.clone() };
        let fwd = match Fwd::new(id, 1, mem, client, regions) {
            Ok(f) => f,
            Err(e) => {
                self.state.lock().unwrap().abandon_out(client, id);
                return err(ErrorCode::Internal, e);
            }
        };
        trace_connect("request", fwd.local);
        self.pending.lock().unwrap().insert(key, Pending { fwd: fwd.clone(), peer: peer.clone(), since: Instant::now() });
        let body = wire::Connect { tenant: tenant.to_string(), listener, nonce, credit: fwd.ring };
        peer.submit(self, fwd, body, router_id);
        Reply::NotReady.into()
    }

    /// The client left: connects it never collected are dropped.
    pub fn forget_client(&self, client: u64) {
        let gone: Vec<Arc<Fwd>> = {
            let mut p = self.pending.lock().unwrap();
            let keys: Vec<Key> = p.keys().filter(|k| k.0 == client).copied().collect();
            keys.into_iter().filter_map(|k| p.remove(&k)).map(|p| p.fwd).collect()
        };
        for f in gone {
            // An accepted one has a pump, which sees the client side closed
            // (the state closed it) and says CLOSE; a waiting one is dropped
            // here, and a late ACCEPT is answered with CLOSE.
            f.refuse(ErrorCode::NotFound, "client left");
        }
    }

    /// The link to `addr`: an existing live one, or a new one being dialed
    /// (one of `tenant`'s few dials at a time).
    fn peer_for(self: &Arc<Self>, addr: SocketAddr, tenant: &Arc<str>) -> Result<Arc<Peer>, Outcome> {
        let mut out = self.out.lock().unwrap();
        if let Some(p) = out.get(&addr) {
            if !p.dead.load(Ordering::Acquire) {
                return Ok(p.clone());
            }
        }
        if self.links() >= self.cfg.max_links {
            return Err(err(ErrorCode::ResourceExhausted, format!("this router has {} links to other routers (limit)", self.links())));
        }
        {
            let mut d = self.dials.lock().unwrap();
            let n = d.entry(tenant.clone()).or_default();
            if *n >= DIALS_PER_TENANT {
                return Err(err(ErrorCode::ResourceExhausted, format!("tenant {tenant} has {n} links to other routers being set up (limit); try again")));
            }
            *n += 1;
        }
        let p = Peer::new(format!("link to {addr}"), Some(addr), Arc::downgrade(self));
        out.insert(addr, p.clone());
        let (r, p2, t) = (self.clone(), p.clone(), tenant.clone());
        let spawned = std::thread::Builder::new().name("peer-dial".into()).spawn(move || {
            r.dial(p2, addr);
            count_down(&r.dials, &t);
        });
        if let Err(e) = spawned {
            drop(out); // kill() takes it
            count_down(&self.dials, tenant);
            self.counters.dial_failures.fetch_add(1, Ordering::Relaxed);
            p.kill(Cause::Local, &format!("cannot start dialing: {e}"));
        }
        Ok(p)
    }

    /// Dials every stream of a link to `addr` and brings it up. However it
    /// fails (nothing listens, something else listens, a router with
    /// another secret, a stall), the connects waiting for it get the same
    /// error at the same time, DIAL_TIMEOUT after the dial began: tenants
    /// learn nothing about the port. The router's log says what happened.
    fn dial(self: &Arc<Self>, peer: Arc<Peer>, addr: SocketAddr) {
        let deadline = Instant::now() + DIAL_TIMEOUT;
        // The data streams, and one for connection set-up (see `ctrl_stream`);
        // fewer if the peer router takes fewer (its `--peer-streams` is
        // smaller): then the link has as many as it takes.
        let mut n = self.cfg.streams + 1;
        let up = (|| loop {
            let link_id: u64 = rand::random();
            let mut socks = Vec::with_capacity(n);
            let mut id = None;
            let mut fewer = None;
            for i in 0..n {
                let (s, a) = match tcp::dial_stream(addr, &self.me, link_id, i, n, deadline) {
                    Ok(x) => x,
                    Err(e) => match link::auth::fewer_streams(&e) {
                        Some(max) if i == 0 && (1..n).contains(&max) => {
                            fewer = Some(max);
                            break;
                        }
                        _ => return Err(e.to_string()),
                    },
                };
                if id.is_some_and(|p| p != a.peer_id) {
                    return Err("the peer router changed while dialing".to_string());
                }
                id = Some(a.peer_id);
                socks.push((s, a.keys));
                peer.step();
            }
            if let Some(max) = fewer {
                limited!(info, "link-streams", &addr.ip().to_string(), "the router at {addr} takes {max} streams per link (this one's links have {n}): dialing it with {max}");
                n = max;
                continue;
            }
            let id = id.expect("at least one stream");
            let link = self.make_link(socks, format!("link to router {} at {addr}", hex(&id[..4])), &|| peer.step()).map_err(|e| e.to_string())?;
            return Ok((link, id));
        })();
        match up {
            Ok((link, id)) => {
                limited!(info, "link-up", &addr.ip().to_string(), "{} is up ({n} streams)", link.describe());
                let _ = peer.peer_id.set(id);
                peer.up(self, link);
            }
            Err(why) => {
                limited!(warn, "dial", "", "cannot link with {addr}: {why}");
                self.counters.dial_failures.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                peer.kill(Cause::Io, &format!("no FreeFlow router answered at {addr}"));
            }
        }
    }

    /// A CONNECT from a peer router (on its receiver thread): check it like
    /// a local connect, and start forwarding or refuse.
    fn on_connect(self: &Arc<Self>, peer: &Arc<Peer>, link: &Arc<dyn Link>, s: usize, h: Header, body: wire::Connect) {
        let refuse = |code: ErrorCode, message: String| {
            peer.queue_answer(s, wire::control_frame(wire::REFUSE, h.conn, &wire::Refuse { code, message }));
        };
        if !wire::valid_credit(body.credit) {
            return refuse(ErrorCode::InvalidArgument, format!("bad ring size {}", body.credit));
        }
        let made = {
            let mut st = self.state.lock().unwrap();
            let ring = scaled_ring(self.cfg.ring_size, self.cfg.ring_budget, st.forwarded(&body.tenant));
            st.connect_in(&body.tenant, body.listener, body.nonce, ring)
        };
        let (id, mem, owner) = match made {
            Ok(x) => x,
            Err((code, msg)) => return refuse(code, msg),
        };
        let regions = Regions { state: Arc::downgrade(&self.state), tenant: body.tenant.as_str().into() };
        let f = match Fwd::new(id, 0, mem, owner, regions) {
            Ok(f) => f,
            Err(e) => return refuse(ErrorCode::Internal, e),
        };
        f.stream.store(data_stream(&**link, h.conn), Ordering::Relaxed);
        f.accepted(h.conn, body.credit);
        if let Err(e) = f.register(&**link) {
            f.peer_gone();
            return refuse(ErrorCode::Internal, format!("cannot register memory: {e}"));
        }
        peer.conns.lock().unwrap().insert(id, f.clone());
        let accept = wire::control_frame(wire::ACCEPT, h.conn, &wire::Accept { conn: id, credit: f.ring });
        log::debug!("{}: connection {id} from tenant {} to listener {}", peer.name, body.tenant, body.listener);
        // The ACCEPT goes on the connection's data stream, ahead of its
        // data: from this thread when the stream takes it now (its pump
        // has not started, so nothing of it can be ahead), else as the
        // pump's first frame.
        trace_connect("accept-queued", h.conn);
        let first = (!peer.send_now(&**link, f.stream(), &accept)).then_some(accept);
        spawn_pump(peer.clone(), link.clone(), f, first);
    }
}

/// The stream of a link that carries connection set-up (CONNECT and its
/// REFUSE): the last one, which no connection's data uses, so a connect
/// never waits behind data in socket buffers or send queues. (A link of
/// one stream has no such stream: everything shares it.)
fn ctrl_stream(link: &dyn Link) -> usize {
    link.streams() - 1
}

/// The data stream of connection `conn` (the connecting router's id: both
/// routers compute the same): all but the set-up stream, in turn.
fn data_stream(link: &dyn Link, conn: u64) -> usize {
    (conn % link.streams().saturating_sub(1).max(1) as u64) as usize
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Outcome {
    proto::error_reply(code, msg).into()
}

/// Gives back one of `key`'s slots in a map of counts (a handshake by
/// address, a dial by tenant); keys at zero go.
fn count_down<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut c = counts.lock().unwrap();
    if let Some(n) = c.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            c.remove(key);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    //! The whole engine in one process: two routers (TCP between them, or
    //! RDMA on the fake NIC), clients attached through their sockets, small
    //! rings so that credits, wraps and split records all happen often.
    use super::*;
    use crate::{Limits, Router, Tenant};
    use ffcore::{Conn, Context};

    mod hostile_peer;
    mod hostile_tenant;

    /// The cluster secret of the routers here (links over TCP are sealed).
    const SECRET: &[u8] = b"engine tests' shared secret";

    struct Two {
        _routers: [Router; 2],
        dir: std::path::PathBuf,
    }

    impl Two {
        fn new(t: Transport, ring_size: usize) -> Two {
            Self::with_streams(t, ring_size, 2)
        }

        fn with_streams(t: Transport, ring_size: usize, streams: usize) -> Two {
            Self::with_workers(t, ring_size, streams, 2)
        }

        fn with_workers(t: Transport, ring_size: usize, streams: usize, workers: usize) -> Two {
            Self::build(t, ring_size, [streams; 2], workers, RING_BUDGET)
        }

        /// Router `i` has `streams[i]` data streams per link.
        fn build(t: Transport, ring_size: usize, streams: [usize; 2], workers: usize, ring_budget: usize) -> Two {
            let dir = std::env::temp_dir().join(format!("ffremote-{}-{}", std::process::id(), rand::random::<u32>()));
            std::fs::create_dir_all(&dir).unwrap();
            let mk = |i: usize| {
                let mut r = Router::new(Limits { ring_size, ..Limits::default() });
                let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let secret: Option<Arc<[u8]>> = (t == Transport::Tcp).then(|| Arc::from(SECRET));
                let cfg = Config { listen: any, advertise: any, streams: streams[i], secret, transport: t, ring_size, ring_budget, peers: PeerPolicy::any(), max_links: MAX_LINKS, rdma: None, workers };
                r.enable_remote(cfg).unwrap();
                r.serve_tenant(&Tenant { name: "a".into(), socket: dir.join(format!("r{i}.sock")) }).unwrap();
                r
            };
            Two { _routers: [mk(0), mk(1)], dir }
        }

        /// Router `i`'s service for other hosts.
        fn remote(&self, i: usize) -> &Arc<Remote> {
            self._routers[i].remote.as_ref().unwrap()
        }

        fn pump_threads(&self, i: usize) -> usize {
            self.remote(i).pump_threads()
        }

        fn ctx(&self, i: usize) -> Context {
            Context::with_socket(self.dir.join(format!("r{i}.sock")).to_str().unwrap()).unwrap()
        }
    }

    impl Drop for Two {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn connect(ctx: &Context, h: &ffcore::Handle) -> Conn {
        let t = Instant::now();
        loop {
            if let Some(c) = ctx.connect(h).unwrap() {
                return c;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "connect never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One connection between a client of each router: (contexts, the
    /// accepting end on router 0, the connecting end on router 1).
    fn conn_pair(two: &Two) -> ([Context; 2], Conn, Conn) {
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let b = connect(&c1, &l.handle());
        let a = l.accept_timeout(Duration::from_secs(10)).unwrap();
        ([c0, c1], a, b)
    }

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(131) ^ seed.wrapping_mul(7)) as u8).collect()
    }

    const SIZES: [usize; 12] = [0, 1, 8, 63, 64, 1000, 4095, 4097, 16384, 65537, 300_000, 2 << 20];
    const T: Option<Duration> = Some(Duration::from_secs(60));

    /// Both ends send every size to each other at once (16 in flight), and
    /// check every byte.
    fn exchange(a: &mut Conn, b: &mut Conn, rounds: usize) {
        std::thread::scope(|sc| {
            for (me, c) in [(0usize, a), (1usize, b)] {
                sc.spawn(move || {
                    let msgs: Vec<Vec<u8>> = (0..rounds * SIZES.len()).map(|i| pattern(SIZES[i % SIZES.len()], i * 2 + me)).collect();
                    let mut bufs: Vec<Vec<u8>> = (0..msgs.len()).map(|i| vec![0u8; SIZES[i % SIZES.len()] + 7]).collect();
                    let mut sends = std::collections::VecDeque::new();
                    let mut recvs = std::collections::VecDeque::new();
                    let (mut ns, mut nr) = (0, 0);
                    while nr < msgs.len() || !recvs.is_empty() || !sends.is_empty() {
                        while ns < msgs.len() && sends.len() < 16 {
                            sends.push_back(unsafe { c.isend(msgs[ns].as_ptr(), msgs[ns].len(), 5).unwrap() });
                            ns += 1;
                        }
                        while nr < msgs.len() && recvs.len() < 16 {
                            recvs.push_back((nr, unsafe { c.irecv(bufs[nr].as_mut_ptr(), bufs[nr].len(), 5).unwrap() }));
                            nr += 1;
                        }
                        if let Some(&s) = sends.front() {
                            if c.test(s).unwrap().is_some() {
                                sends.pop_front();
                            }
                        }
                        if let Some(&(i, r)) = recvs.front() {
                            if let Some(n) = c.wait(r, T).ok() {
                                recvs.pop_front();
                                let want = pattern(SIZES[i % SIZES.len()], i * 2 + (1 - me));
                                assert_eq!(n, want.len(), "message {i}");
                                assert!(bufs[i][..n] == want[..], "message {i} of {n} bytes differs");
                            } else {
                                panic!("receive {i} failed");
                            }
                        } else if let Some(s) = sends.pop_front() {
                            c.wait(s, T).unwrap();
                        }
                    }
                });
            }
        });
    }

    /// Routers with different `--peer-streams`: a link has as many streams
    /// as the router with fewer takes (the dialer with more tries again
    /// with that many), and carries everything both ways.
    #[test]
    fn routers_with_different_stream_counts_link_with_the_fewer() {
        let two = Two::build(Transport::Tcp, 64 << 10, [1, 4], 2, RING_BUDGET);
        let streams_of = |i: usize| -> Vec<usize> {
            let out = two.remote(i).out.lock().unwrap();
            out.values().filter_map(|p| p.inner.lock().unwrap().link.as_ref().map(|l| l.streams())).collect()
        };
        // Router 1 (4 + 1 streams) dials router 0 (1 + 1): two streams.
        let (_c, mut a, mut b) = conn_pair(&two);
        exchange(&mut a, &mut b, 1);
        assert_eq!(streams_of(1), [2]);
        // Router 0 dials router 1 with its own two.
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c1.listen().unwrap();
        let mut d = connect(&c0, &l.handle());
        let mut e = l.accept_timeout(Duration::from_secs(10)).unwrap();
        exchange(&mut d, &mut e, 1);
        assert_eq!(streams_of(0), [2]);
    }

    fn checksummed_both_ways(t: Transport) {
        let two = Two::new(t, 16 << 10);
        let ([c0, c1], mut a, mut b) = conn_pair(&two);
        exchange(&mut a, &mut b, 3);
        // Close one end: the other sees PeerClosed after the data.
        a.send(b"bye", 1, T).unwrap();
        drop(a);
        let mut buf = [0u8; 8];
        assert_eq!(b.recv(&mut buf, 1, T).unwrap(), 3);
        assert!(matches!(b.recv(&mut buf, 1, Some(Duration::from_secs(10))), Err(ffcore::Error::PeerClosed)));
        drop(b);
        for c in [&c0, &c1] {
            let t0 = Instant::now();
            while c.stats().unwrap().conns != 0 {
                assert!(t0.elapsed() < Duration::from_secs(5), "connections not freed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The pump's look after announcing its sleep (`sendable`, through
    /// `needs_pump`) sees the rest of a shadow-memory reference whose
    /// record has left the ring, once credit allows it; and a connection
    /// whose client closed is not drained while one is half sent.
    #[test]
    fn a_half_sent_reference_is_sendable_once_credit_comes() {
        let ring = 64 << 10;
        let mem = Arc::new(SharedMem::create("fwd-test", ring::file_len(ring)).unwrap());
        ring::init(&mem, ring);
        let regions = Regions { state: std::sync::Weak::new(), tenant: "t".into() };
        let f = Fwd::new(1, 0, mem.clone(), 1, regions).unwrap();
        let mut out = f.out.lock().unwrap();
        assert!(!f.sendable(&out) && out.drained(), "nothing written");
        out.charged = 1000;
        f.limit.store(1100, Ordering::Release);
        out.need = Some(200);
        out.shadow = Some(OutShadow { mem, off: 0, n: 4096, sent: 1024, tag: 0, total: 4096, direct: false });
        assert!(!f.sendable(&out), "credit short");
        assert!(!out.drained(), "half sent");
        f.limit.store(1200, Ordering::Release);
        assert!(f.sendable(&out), "the rest of the reference, now that credit came");
        out.shadow = None;
        assert!(!f.sendable(&out) && out.drained());
    }

    /// Messages sent by reference from shadow memory (the sender's router
    /// frames them straight from the region) through rings far smaller
    /// than a message, so that the pump runs out of credit in the middle
    /// of nearly every reference, into shadow memory (placed) and into
    /// private memory (the ring), every byte checked. A pump that slept
    /// through a CREDIT there hung this for good (see `sendable`).
    #[test]
    fn references_across_hosts_through_small_rings_all_arrive() {
        let two = Two::new(Transport::Tcp, 16 << 10);
        let ([c0, c1], mut a, mut b) = conn_pair(&two);
        let n = 1 << 20;
        let src = c1.alloc_region(n).unwrap();
        let dst = c0.alloc_region(n).unwrap();
        let mut private = vec![0u8; n];
        for i in 0..400usize {
            let want = pattern(n, i);
            // SAFETY: the region holds n bytes, ours alone.
            unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), src.as_ptr(), n) };
            let into: &mut [u8] = if i % 2 == 0 { unsafe { std::slice::from_raw_parts_mut(dst.as_ptr(), n) } } else { &mut private };
            std::thread::scope(|sc| {
                let s = sc.spawn(|| b.send(unsafe { std::slice::from_raw_parts(src.as_ptr(), n) }, 3, T).unwrap());
                assert_eq!(a.recv(into, 3, T).unwrap(), n, "message {i}");
                assert_eq!(s.join().unwrap(), n);
            });
            assert!(into[..] == want[..], "message {i} differs");
        }
        assert!(c1.stats().unwrap().bytes_sent < 4 << 20, "sent by reference, not through the ring");
    }

    /// An answer written after the receiver thread's cover of its
    /// connection lapsed is forwarded at once: the cover's end announced
    /// the pump's sleep for it. (Were the announcement lost, each answer
    /// would wait for the pump worker's safety-net look, 200 ms or more.)
    #[test]
    fn answers_after_a_lapsed_cover_still_wake_the_pump() {
        let two = Two::new(Transport::Tcp, 64 << 10);
        let (_ctxs, mut a, mut b) = conn_pair(&two);
        let mut took = Vec::new();
        let mut buf = [0u8; 16];
        for i in 0..40u8 {
            let (from, to) = if i % 2 == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
            // Longer than the reply window: the cover of `from`'s
            // connection at its router lapses first.
            std::thread::sleep(Duration::from_millis(5));
            let t0 = Instant::now();
            from.send(&[i; 8], 3, T).unwrap();
            assert_eq!(to.recv(&mut buf, 3, T).unwrap(), 8);
            took.push(t0.elapsed());
            assert_eq!(buf[..8], [i; 8]);
        }
        took.sort();
        // The median: a slow answer on a busy machine is not a lost wake-up.
        assert!(took[took.len() / 2] < Duration::from_millis(100), "answers took {took:?}");
    }

    /// Resident KiB of this process's mappings of connection files of
    /// `file_kib` (both clients' and both routers' here).
    fn conn_rss_kib(file_kib: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let size = file_kib.to_string();
        let (mut total, mut ours) = (0, false);
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            let first = f.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                // A mapping's header line.
                ours = line.contains("/memfd:ff-conn");
                continue;
            }
            match first {
                "Size:" if ours => ours = f.next() == Some(&size),
                "Rss:" if ours => total += f.next().unwrap().parse::<usize>().unwrap(),
                _ => {}
            }
        }
        total
    }

    #[test]
    fn rings_shrink_by_halves_to_the_floor_once_the_budget_is_spent() {
        let (max, budget) = (4 << 20, 256 << 20);
        assert_eq!(scaled_ring(max, budget, 0), max);
        assert_eq!(scaled_ring(max, budget, 63), max, "64 connections fit the budget whole");
        assert_eq!(scaled_ring(max, budget, 64), 2 << 20);
        assert_eq!(scaled_ring(max, budget, 127), 2 << 20);
        assert_eq!(scaled_ring(max, budget, 128), 1 << 20);
        assert_eq!(scaled_ring(max, budget, 300), SCALED_RING_MIN);
        assert_eq!(scaled_ring(max, budget, usize::MAX), SCALED_RING_MIN);
        assert_eq!(scaled_ring(max, 0, 0), SCALED_RING_MIN);
        // Never above --peer-ring-size, which may be below the floor.
        assert_eq!(scaled_ring(64 << 10, 0, 10), 64 << 10);
        for open in 0..2000 {
            let r = scaled_ring(max, budget, open);
            assert!(r.is_power_of_two() && (SCALED_RING_MIN..=max).contains(&r) && ffcore::ring::valid_ring_size(r), "{open}: {r}");
        }
    }

    /// With the ring budget spent, later connections between hosts get
    /// smaller rings on both routers, and still carry every size (messages
    /// of more than a quarter of the ring go in pieces), checked byte by
    /// byte, beside one that has the whole ring.
    #[test]
    fn connections_beyond_the_ring_budget_get_smaller_rings_and_carry_everything() {
        let ring_of = |c: &Conn| (c.max_whole() + ffcore::ring::REC_HDR) * 4;
        let two = Two::build(Transport::Tcp, 1 << 20, [2, 2], 2, 1 << 20);
        let (ctx, mut a0, mut b0) = conn_pair(&two);
        assert_eq!((ring_of(&a0), ring_of(&b0)), (1 << 20, 1 << 20), "the first fits the budget");
        let l = ctx[0].listen().unwrap();
        let mut b1 = connect(&ctx[1], &l.handle());
        let mut a1 = l.accept_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((ring_of(&a1), ring_of(&b1)), (SCALED_RING_MIN, SCALED_RING_MIN), "the second gets the floor");
        std::thread::scope(|sc| {
            sc.spawn(|| exchange(&mut a0, &mut b0, 2));
            sc.spawn(|| exchange(&mut a1, &mut b1, 2));
        });
    }

    /// A connection between hosts that went idle has its rings trimmed
    /// (the client's with the shared handshake, the router's own under its
    /// lock) and carries every size intact afterwards.
    #[test]
    fn idle_rings_between_hosts_are_trimmed_and_still_carry_everything() {
        // A ring size no other test uses: its files are told apart by size.
        let ring = 512 << 10;
        let file_kib = ring::file_len(ring) >> 10;
        let two = Two::new(Transport::Tcp, ring);
        let (_ctx, mut a, mut b) = conn_pair(&two);
        exchange(&mut a, &mut b, 2);
        let busy = conn_rss_kib(file_kib);
        assert!(busy >= 2 * (ring >> 10), "both hosts' rings streamed: {busy} KiB resident");
        // Each of the 4 mappings keeps at most its control page and two
        // rings' kept bytes (and a page either side).
        let bound = 4 * (4 + 2 * (ffcore::ring::TRIM_KEEP >> 10) + 8);
        let t0 = Instant::now();
        let mut idle = busy;
        while idle > bound {
            assert!(t0.elapsed() < Duration::from_secs(30), "still {idle} KiB resident after 30 s idle (was {busy})");
            std::thread::sleep(Duration::from_millis(200));
            idle = conn_rss_kib(file_kib);
        }
        exchange(&mut a, &mut b, 2);
        assert!(conn_rss_kib(file_kib) > idle, "streaming again commits pages again");
    }

    #[test]
    fn rings_registered_with_a_nic_are_never_trimmed() {
        // An RDMA NIC keeps the pages it was given: a punched ring would
        // be read from the old pages while the processes write new ones.
        let ring = 256 << 10;
        let file_kib = ring::file_len(ring) >> 10;
        let two = Two::new(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 }, ring);
        let (_ctx, mut a, mut b) = conn_pair(&two);
        exchange(&mut a, &mut b, 2);
        let busy = conn_rss_kib(file_kib);
        assert!(busy >= 2 * (ring >> 10), "both hosts' rings streamed: {busy} KiB resident");
        // Past the idle time and several sweeps.
        std::thread::sleep(crate::trim::idle_before_trim() + crate::trim::sweep_every() * 3);
        assert_eq!(conn_rss_kib(file_kib), busy, "a ring registered with the NIC was trimmed");
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn engine_over_tcp_moves_every_size_with_small_rings() {
        checksummed_both_ways(Transport::Tcp);
    }

    #[test]
    fn engine_over_fake_rdma_moves_every_size_with_small_rings() {
        checksummed_both_ways(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 });
    }

    /// Throughput of one connection over RDMA on the fake NIC with an
    /// emulated link's numbers (every operation 25 ms, 6 MB/s: soft-RoCE
    /// under TCG), vs the NIC's own READ bandwidth with 16 READs in flight
    /// (what `ib_read_bw` measures). A bench, not a test of speed: run with
    /// `cargo test -p ffrouter --lib --release -- --ignored --nocapture
    /// fake_rdma_bandwidth`; it asserts only that every byte arrived.
    #[test]
    #[ignore]
    fn fake_rdma_bandwidth() {
        use crate::link::verbs::{Cq, Fabric, Op, QpState, SendWr, Sge, Verbs};
        let (delay, rate) = (Duration::from_millis(25), 6e6);
        let raw = |size: usize, n: usize| {
            let f = Fabric::default();
            let (a, b) = (f.slow_nic(delay).with_rate(rate), f.nic());
            let (qa, qb) = (a.create_qp(64, 64).unwrap(), b.create_qp(64, 64).unwrap());
            let (ea, eb) = (a.endpoint(qa).unwrap(), b.endpoint(qb).unwrap());
            for (v, q, e) in [(&a as &dyn Verbs, qa, eb), (&b, qb, ea)] {
                v.modify_qp(q, QpState::Init, None).unwrap();
                v.modify_qp(q, QpState::Rtr, Some(&e)).unwrap();
                v.modify_qp(q, QpState::Rts, None).unwrap();
            }
            let mut src = vec![1u8; size];
            let mut dst = vec![0u8; size];
            let (ms, md) = (b.reg_mr(src.as_mut_ptr(), size).unwrap(), a.reg_mr(dst.as_mut_ptr(), size).unwrap());
            let t0 = Instant::now();
            let (mut posted, mut done) = (0, 0);
            while done < n {
                while posted < n && posted - done < 16 {
                    let sge = Sge { addr: md.addr, len: size as u32, lkey: md.lkey };
                    a.post_send(qa, &SendWr { wr_id: posted as u64, op: Op::Read, sges: vec![sge], remote_addr: ms.addr, rkey: ms.rkey, signaled: true }).unwrap();
                    posted += 1;
                }
                a.wait(qa, Cq::Send, Duration::from_secs(5)).unwrap();
                done += a.poll(qa, Cq::Send, 64).unwrap().iter().inspect(|w| assert_eq!(w.status, 0)).count();
            }
            (size * n) as f64 / t0.elapsed().as_secs_f64() / 1e6
        };
        let ff = |size: usize, n: usize| stream_mb_s(Transport::FakeRdma { delay_ms: 25, setup_ms: 0, kb_s: 6000 }, size, n, 1);
        // Links read FF_RDMA_PIPELINE when they are made: one Two per mode.
        let mode = |on: bool| std::env::set_var("FF_RDMA_PIPELINE", if on { "1" } else { "0" });
        println!("fake NIC: {delay:?} per operation, {} MB/s", rate / 1e6);
        println!("| size | raw READ MB/s (16 in flight) | ff, one READ at a time (FF_RDMA_PIPELINE=0) | ff, many in flight | before / raw | after / raw |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for (size, n) in [(64 << 10, 200), (1 << 20, 20), (4 << 20, 8)] {
            let r = raw(size, n.max(32));
            mode(false);
            let before = ff(size, n);
            mode(true);
            let after = ff(size, n);
            println!("| {size} | {r:.2} | {before:.2} | {after:.2} | {:.2}x | {:.2}x |", before / r, after / r);
        }
        std::env::remove_var("FF_RDMA_PIPELINE");
    }

    /// One connection streaming over RDMA on a fake NIC without delay
    /// (the NIC's copies cost what the CPU's do): what the engine itself
    /// costs per frame. A bench, not a test of speed: `cargo test -p
    /// ffrouter --lib --release -- --ignored --nocapture
    /// fast_fake_rdma_stream`; it asserts only that every message arrived.
    #[test]
    #[ignore]
    fn fast_fake_rdma_stream() {
        for size in [4096usize, 64 << 10, 1 << 20] {
            let mbs = stream_mb_s(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 }, size, (2usize << 30) / size / 4, 1024);
            println!("fast fake NIC, one connection, {size} B messages: {mbs:.1} MB/s");
        }
    }

    /// MB/s of one connection between two routers over `t` (4 streams, 4
    /// MiB rings) sending `n` messages of `size` bytes with 8 in flight
    /// (NCCL's requests per connection); the receiver compares every
    /// `check_every`th message with what was sent (the benches above).
    fn stream_mb_s(t: Transport, size: usize, n: usize, check_every: usize) -> f64 {
        let two = Two::with_streams(t, 4 << 20, 4);
        let ([_c0, _c1], mut rx, mut tx) = conn_pair(&two);
        let msgs: Vec<Vec<u8>> = (0..8).map(|i| pattern(size, i)).collect();
        let t0 = Instant::now();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut q = std::collections::VecDeque::new();
                for i in 0..n {
                    if q.len() == 8 {
                        tx.wait(q.pop_front().unwrap(), T).unwrap();
                    }
                    q.push_back(unsafe { tx.isend(msgs[i % 8].as_ptr(), size, 1).unwrap() });
                }
                for r in q {
                    tx.wait(r, T).unwrap();
                }
            });
            let mut buf = vec![0u8; size];
            for i in 0..n {
                assert_eq!(rx.recv(&mut buf, 1, T).unwrap(), size);
                assert!(i % check_every != 0 || buf == msgs[i % 8], "message {i} differs");
            }
        });
        (size * n) as f64 / t0.elapsed().as_secs_f64() / 1e6
    }

    #[test]
    fn a_client_that_closes_while_the_peer_still_reads_loses_nothing() {
        // Over RDMA the pump sends gathers without waiting for the peer's
        // READs (every operation here takes 25 ms): a client that sends
        // big messages and leaves at once must still have every byte
        // arrive (its ring stays registered until read), and the link must
        // stay up for the next connection.
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 25, setup_ms: 0, kb_s: 0 }, 1 << 20, 2);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        for round in 0..2 {
            let mut tx = connect(&c1, &l.handle());
            let mut rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
            // All in the client's ring at once (no send waits for the
            // router), then the client leaves.
            let msgs: Vec<Vec<u8>> = (0..6).map(|i| pattern(100_000 + i * 4099, i + round * 100)).collect();
            for m in &msgs {
                let r = unsafe { tx.isend(m.as_ptr(), m.len(), 1).unwrap() };
                assert!(tx.test(r).unwrap().is_some(), "the message went into the ring");
            }
            drop(tx);
            let mut buf = vec![0u8; 200_000];
            for (i, m) in msgs.iter().enumerate() {
                let n = rx.recv(&mut buf, 1, T).unwrap_or_else(|e| panic!("round {round}: message {i}: {e}"));
                assert!(n == m.len() && buf[..n] == m[..], "round {round}: message {i} differs");
            }
        }
    }

    #[test]
    fn an_rdma_link_serves_connection_after_connection() {
        // As testkit/softroce.sh runs ffbench: a connection exchanging
        // every size both ways, then a ping-pong of small messages, then a
        // third connection, each by new clients that leave when done; over
        // an emulated fabric (25 ms per operation) and 4 streams. Found
        // on soft-RoCE: a pump worker ending a connection deregistered its
        // ring, which waited for every stream's receiver, and a receiver
        // held its stream while it waited for the next frame: the worker
        // (and the third connection's ACCEPT with it) hung.
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 25, setup_ms: 0, kb_s: 0 }, 4 << 20, 4);
        {
            let ([_c0, _c1], mut a, mut b) = conn_pair(&two);
            exchange(&mut a, &mut b, 1);
        }
        {
            let ([_c0, _c1], mut a, mut b) = conn_pair(&two);
            let mut buf = [0u8; 8];
            for i in 0..40u64 {
                b.send(&i.to_le_bytes(), 1, T).unwrap();
                assert_eq!(a.recv(&mut buf, 1, T).unwrap(), 8);
                a.send(&buf, 1, T).unwrap();
                assert_eq!(b.recv(&mut buf, 1, T).unwrap(), 8);
                assert_eq!(u64::from_le_bytes(buf), i);
            }
        }
        let ([_c0, _c1], mut a, mut b) = conn_pair(&two);
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn big_messages_from_shadow_memory_cross_an_rdma_link() {
        // Found on soft-RoCE: shadow regions are not registered with the
        // NIC, and a frame of one bigger than a record can hold failed the
        // link ("frame payload too big for an unregistered buffer").
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 }, 4 << 20, 2);
        let ([c0, c1], mut rx, mut tx) = conn_pair(&two);
        const PAGE: usize = 4096;
        let mut sraw = vec![0u8; (2 << 20) + PAGE];
        let soff = (PAGE - sraw.as_ptr() as usize % PAGE) % PAGE;
        let mut rraw = vec![0u8; (2 << 20) + PAGE];
        let roff = (PAGE - rraw.as_ptr() as usize % PAGE) % PAGE;
        let n = (1 << 20) + 12345;
        let want = pattern(n, 77);
        sraw[soff..soff + n].copy_from_slice(&want);
        // Since then the routers register regions with the NIC, which READs
        // big frames straight out of and into them: each round registers
        // the buffers anew (the regions before are freed, and their
        // registrations must not be used for the new ones).
        for round in 0..3 {
            let _smr = unsafe { c1.register_shadow(sraw.as_ptr().add(soff), 2 << 20).unwrap() };
            let _rmr = unsafe { c0.register_shadow(rraw.as_ptr().add(roff), 2 << 20).unwrap() };
            rraw[roff..roff + n].fill(0);
            let r = unsafe { rx.irecv(rraw.as_mut_ptr().add(roff), 2 << 20, 1).unwrap() };
            let w = unsafe { tx.isend(sraw.as_ptr().add(soff), n, 1).unwrap() };
            tx.wait(w, T).unwrap();
            assert_eq!(rx.wait(r, T).unwrap(), n, "round {round}");
            assert!(rraw[roff..roff + n] == want[..], "round {round}: bytes differ");
        }
    }

    /// Receives `n` messages into a posted receive in shadow memory, one
    /// at a time, then answers: the answer must arrive.
    fn receive_only_then_answer(t: Transport) {
        // Found with `ffbench scale --register` across two hosts: every
        // receive posted into shadow memory puts a record in the client's
        // ring to its router, and the pump consumed those records without
        // giving their bytes back (the ring is held until frames are sent,
        // and posts make none). After a ring's worth of posts (32768 on a
        // 4 MiB ring, 512 on this one) the receiving client could not send
        // anything again: its answer never left, and the stream stopped.
        // Outlives the connections: the answer's send may still be queued.
        let answer = [7u8; 16];
        let two = Two::new(t, 64 << 10);
        let ([c0, _c1], mut rx, mut tx) = conn_pair(&two);
        const PAGE: usize = 4096;
        const CAP: usize = ffcore::conn::SHADOW_MIN;
        let mut raw = vec![0u8; CAP + PAGE];
        let off = (PAGE - raw.as_ptr() as usize % PAGE) % PAGE;
        let _mr = unsafe { c0.register_shadow(raw.as_ptr().add(off), CAP).unwrap() };
        let n = 3000;
        let sender = std::thread::spawn(move || {
            for i in 0..n {
                tx.send(&pattern(100, i), 1, T).unwrap();
            }
            let mut got = [0u8; 16];
            let res = tx.recv(&mut got, 2, Some(Duration::from_secs(20)));
            (tx, res.map(|k| (k, got)))
        });
        for i in 0..n {
            let r = unsafe { rx.irecv(raw.as_mut_ptr().add(off), CAP, 1).unwrap() };
            assert_eq!(rx.wait(r, T).unwrap(), 100, "message {i}");
            assert!(raw[off..off + 100] == pattern(100, i)[..], "message {i} differs");
        }
        let w = unsafe { rx.isend(answer.as_ptr(), answer.len(), 2).unwrap() };
        let sent = rx.wait(w, Some(Duration::from_secs(20)));
        let (_tx, got) = sender.join().unwrap();
        assert!(sent.is_ok(), "the answer after {n} posted receives was not sent: {sent:?}");
        assert_eq!(got.unwrap(), (16, answer));
    }

    #[test]
    fn receives_posted_after_their_messages_came_do_not_pile_up() {
        // 1,100 small messages reach the receiver's ring before it posts
        // any receive; then it takes each with a receive posted in shadow
        // memory. Every post names a message already started, so the
        // router drops it. (Kept until the next message started, as they
        // were for a while, they piled up: none started, and 64 were still
        // queued at the end here, on their way to MAX_POSTS, at which the
        // router breaks the connection.)
        let two = Two::new(Transport::Tcp, 1 << 20);
        let ([c0, _c1], mut rx, mut tx) = conn_pair(&two);
        const PAGE: usize = 4096;
        const CAP: usize = ffcore::conn::SHADOW_MIN;
        let mut raw = vec![0u8; CAP + PAGE];
        let off = (PAGE - raw.as_ptr() as usize % PAGE) % PAGE;
        let _mr = unsafe { c0.register_shadow(raw.as_ptr().add(off), CAP).unwrap() };
        let n = MAX_POSTS + 76;
        for i in 0..n {
            tx.send(&pattern(100, i), 1, T).unwrap();
        }
        let r0 = two.remote(0);
        let f = r0.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).find(|f| f.local == rx.id()).expect("router 0 forwards it");
        let t = Instant::now();
        while f.inb.lock().unwrap().msgs < n as u64 {
            assert!(t.elapsed() < Duration::from_secs(20), "the messages did not all reach the ring");
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..n {
            let r = unsafe { rx.irecv(raw.as_mut_ptr().add(off), CAP, 1).unwrap() };
            assert_eq!(rx.wait(r, T).unwrap_or_else(|e| panic!("message {i}: {e}")), 100, "message {i}");
            assert!(raw[off..off + 100] == pattern(100, i)[..], "message {i} differs");
        }
        assert!(f.posts.lock().unwrap().queue.len() <= 1, "late posts were dropped");
    }

    #[test]
    fn a_client_that_only_received_into_posted_buffers_can_still_answer_over_tcp() {
        receive_only_then_answer(Transport::Tcp);
    }

    #[test]
    fn a_client_that_only_received_into_posted_buffers_can_still_answer_over_fake_rdma() {
        receive_only_then_answer(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 });
    }

    #[test]
    fn sends_read_by_the_peer_complete_even_if_it_closes_at_once() {
        // Found on soft-RoCE (ffbench stream, 1 MiB, 8 in flight): the
        // receiver got every message, answered and closed; the sender was
        // told "peer closed the connection" for its last sends. Their bytes
        // had been READ and acked, but the receiver thread handled the
        // CLOSE (and closed the connection for our client, which fails
        // what it still waits for) before the pump gave the acked sends
        // back. Each round: 8 shadow-memory sends of 256 KiB (READ by the
        // peer router), all received, then the receiver closes at once.
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 40, setup_ms: 0, kb_s: 0 }, 4 << 20, 2);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        const PAGE: usize = 4096;
        const M: usize = 256 << 10;
        let mut sraw = vec![0u8; 8 * M + PAGE];
        let soff = (PAGE - sraw.as_ptr() as usize % PAGE) % PAGE;
        for (i, b) in sraw[soff..soff + 8 * M].chunks_mut(M).enumerate() {
            b.copy_from_slice(&pattern(M, i));
        }
        let _smr = unsafe { c1.register_shadow(sraw.as_ptr().add(soff), 8 * M).unwrap() };
        for round in 0..10 {
            let mut tx = connect(&c1, &l.handle());
            let mut rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
            let sends: Vec<_> = (0..8).map(|i| unsafe { tx.isend(sraw.as_ptr().add(soff + i * M), M, 1).unwrap() }).collect();
            let mut got = vec![vec![0u8; M]; 8];
            for g in got.iter_mut() {
                assert_eq!(rx.recv(g, 1, T).unwrap(), M, "round {round}");
            }
            drop(rx);
            for (i, g) in got.iter().enumerate() {
                assert!(*g == pattern(M, i), "round {round}: message {i} differs");
            }
            for (i, w) in sends.into_iter().enumerate() {
                if let Err(e) = tx.wait(w, T) {
                    panic!("round {round}: send {i}, received by the peer, failed: {e}");
                }
            }
        }
    }

    #[test]
    fn a_connect_waits_for_a_slow_rdma_setup_that_progresses() {
        // Soft-RoCE in an emulated guest took 8-10 s to make a link's queue
        // pairs and register their buffers, and clients' connects failed
        // at CONNECT_TIMEOUT (10 s). Here every queue pair and registration
        // takes 700 ms on both routers: the link needs about 12 s, making a
        // step every few hundred ms. The connect is waited for; then bytes
        // cross intact both ways.
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 0, setup_ms: 700, kb_s: 0 }, 16 << 10, 4);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let t0 = Instant::now();
        let mut b = loop {
            match c1.connect(&l.handle()) {
                Ok(Some(c)) => break c,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("the connect failed after {:?}: {e}", t0.elapsed()),
            }
        };
        // The premise: the setup took longer than CONNECT_TIMEOUT.
        assert!(t0.elapsed() > CONNECT_TIMEOUT, "{:?}", t0.elapsed());
        let mut a = l.accept_timeout(Duration::from_secs(30)).unwrap();
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn a_tight_connect_loop_costs_the_router_few_requests() {
        // NCCL calls connect again and again until the routers have set
        // the connection up. Each call that came too soon after the last
        // "not yet" is answered by the client library alone: over a link
        // whose setup takes a second, a loop with no pause at all sends
        // the router at most one request per ASK_MAX (plus the first few),
        // not one per call, and still connects.
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 0, setup_ms: 60, kb_s: 0 }, 16 << 10, 4);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let before = c1.stats().unwrap().requests;
        let t0 = Instant::now();
        let (mut b, calls) = {
            let mut calls = 0u64;
            loop {
                calls += 1;
                if let Some(c) = c1.connect(&l.handle()).unwrap() {
                    break (c, calls);
                }
                assert!(t0.elapsed() < Duration::from_secs(30), "not connected after {calls} calls");
            }
        };
        let took = t0.elapsed();
        // The stats request itself counts too.
        let asked = c1.stats().unwrap().requests - before - 1;
        // The premise: the setup took long enough for the loop to spin.
        assert!(took > Duration::from_millis(300), "{took:?}");
        let most = 8 + (took.as_micros() / ffcore::client::ASK_MAX.as_micros()) as u64;
        assert!(asked <= most, "{asked} requests in {took:?} ({calls} calls); at most {most} expected");
        assert!(calls > 10 * asked, "{calls} calls, {asked} requests: the loop did not spin");
        let mut a = l.accept_timeout(Duration::from_secs(10)).unwrap();
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn a_slow_rdma_link_under_load_stays_up_on_every_stream() {
        // Issue 14, bug 2: every operation of the fake NIC takes 30 ms (a
        // slow or congested fabric), the link has 4 streams, and payloads
        // over 16 KiB travel by RDMA READ (one READ per frame, in turn), so
        // one send of a gather of such frames waits most of a second for
        // the peer to read them. Three connections stream for longer than
        // the dead time; at least one stream carries none of them and hears
        // only pings, which must not wait behind the busy streams. A link
        // death shows as a failed send or receive; every byte is checked.
        let _ = env_logger::builder().is_test(true).try_init();
        let two = Two::with_streams(Transport::FakeRdma { delay_ms: 30, setup_ms: 0, kb_s: 0 }, 1 << 20, 4);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let mut pairs: Vec<(Conn, Conn)> = (0..3)
            .map(|_| {
                let tx = connect(&c1, &l.handle());
                (tx, l.accept_timeout(Duration::from_secs(10)).unwrap())
            })
            .collect();
        let size = |i: usize| (16 << 10) + 1 + (i * 7919) % 8192;
        // Twice the 3 s RDMA links used to die after.
        let run = Duration::from_secs(6);
        std::thread::scope(|sc| {
            for (k, (tx, rx)) in pairs.iter_mut().enumerate() {
                let n = std::sync::Arc::new(AtomicUsize::new(usize::MAX));
                let n2 = n.clone();
                sc.spawn(move || {
                    let t0 = Instant::now();
                    let mut i = 0;
                    while t0.elapsed() < run {
                        // Keep many messages in flight so that the pump
                        // sends big gathers.
                        let batch: Vec<Vec<u8>> = (i..i + 32).map(|j| pattern(size(j), j + k * 100_000)).collect();
                        let reqs: Vec<_> = batch.iter().map(|m| unsafe { tx.isend(m.as_ptr(), m.len(), 1).unwrap() }).collect();
                        for r in reqs {
                            tx.wait(r, T).unwrap_or_else(|e| panic!("connection {k}: send near {i} failed: {e}"));
                        }
                        i += batch.len();
                    }
                    tx.send(&[], 1, T).unwrap_or_else(|e| panic!("connection {k}: final send failed: {e}"));
                    n2.store(i, Ordering::Release);
                });
                sc.spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut i = 0;
                    loop {
                        let got = rx.recv(&mut buf, 1, T).unwrap_or_else(|e| panic!("connection {k}: receive {i} failed: {e}"));
                        if got == 0 {
                            break; // the end
                        }
                        let want = pattern(size(i), i + k * 100_000);
                        assert!(got == want.len() && buf[..got] == want[..], "connection {k}: message {i} differs");
                        i += 1;
                    }
                    while n.load(Ordering::Acquire) == usize::MAX {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    assert_eq!(i, n.load(Ordering::Acquire), "connection {k}: messages lost");
                });
            }
        });
    }

    #[test]
    fn request_response_and_bursts_hand_over_between_receiver_and_pump() {
        // Ping-pong makes each stream's receiver thread serve the
        // connection (Cover); bursts bigger than the ring make it hand the
        // connection back to the pump (link busy, credit); a pause longer
        // than the reply window uncovers it. Every byte is checked across
        // every hand-over.
        let two = Two::with_streams(Transport::Tcp, 16 << 10, 1);
        let (_ctx, mut a, mut b) = conn_pair(&two);
        let mut buf = vec![0u8; 64 << 10];
        for phase in 0..3 {
            std::thread::scope(|sc| {
                let a = &mut a;
                sc.spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    for i in 0..300 {
                        let n = a.recv(&mut buf, 1, T).unwrap();
                        assert!(buf[..n] == pattern(8, i + phase)[..], "ping {i}");
                        a.send(&pattern(8, i + 1000), 2, T).unwrap();
                    }
                    // Then a burst right after the last answer.
                    for i in 0..40 {
                        a.send(&pattern(20_000 + i, i), 3, T).unwrap();
                    }
                    assert_eq!(a.recv(&mut buf, 4, T).unwrap(), 0, "burst acknowledged");
                });
                for i in 0..300 {
                    b.send(&pattern(8, i + phase), 1, T).unwrap();
                    let n = b.recv(&mut buf, 2, T).unwrap();
                    assert!(buf[..n] == pattern(8, i + 1000)[..], "pong {i}");
                }
                for i in 0..40 {
                    let n = b.recv(&mut buf, 3, T).unwrap();
                    assert!(n == 20_000 + i && buf[..n] == pattern(n, i)[..], "burst message {i}");
                }
                b.send(&[], 4, T).unwrap();
            });
            // Longer than the reply window: the pumps take over again.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn answers_on_the_connection_going_the_other_way_arrive_intact() {
        // As UCX does: each side sends on its own endpoint (connection)
        // and receives on the one the peer opened. The two connections run
        // over two links (each router dials one), and data on one makes
        // the receiver serve the other (sibling covers).
        let two = Two::with_streams(Transport::Tcp, 16 << 10, 2);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let (l0, l1) = (c0.listen().unwrap(), c1.listen().unwrap());
        let mut to0 = connect(&c1, &l0.handle());
        let mut to1 = connect(&c0, &l1.handle());
        let mut from1 = l0.accept_timeout(Duration::from_secs(10)).unwrap();
        let mut from0 = l1.accept_timeout(Duration::from_secs(10)).unwrap();
        for c in [&to0, &to1, &from0, &from1] {
            assert!(c.forwarded(), "connections between hosts say so");
        }
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut buf = vec![0u8; 64 << 10];
                for i in 0..500 {
                    let n = from1.recv(&mut buf, 1, T).unwrap();
                    assert!(buf[..n] == pattern(8 + i % 100, i)[..], "request {i}");
                    to1.send(&pattern(16 + i % 3000, i + 7), 2, T).unwrap();
                }
            });
            let mut buf = vec![0u8; 64 << 10];
            for i in 0..500 {
                to0.send(&pattern(8 + i % 100, i), 1, T).unwrap();
                let n = from0.recv(&mut buf, 2, T).unwrap();
                assert!(buf[..n] == pattern(16 + i % 3000, i + 7)[..], "answer {i}");
            }
        });
        // On one host nothing is forwarded.
        let l = c0.listen().unwrap();
        let local = connect(&c0, &l.handle());
        assert!(!local.forwarded());
    }

    #[test]
    fn whole_messages_stay_whole_across_hosts() {
        // Transports that pack messages in place (try_send_with/poll_whole,
        // as the UCX transport does) get them whole at the far end, also
        // across the wrap of the receiving ring.
        let two = Two::new(Transport::Tcp, 16 << 10);
        let (_ctx, mut a, mut b) = conn_pair(&two);
        let n = 2000;
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 0..n {
                    let m = pattern(1 + (i * 37) % 3000, i);
                    loop {
                        let sent = a
                            .try_send_with(i as u32, m.len(), |p| {
                                unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), p, m.len()) };
                                m.len()
                            })
                            .unwrap();
                        if sent.is_some() {
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
                a
            });
            let mut i = 0;
            let t0 = Instant::now();
            while i < n {
                let got = b
                    .poll_whole(|tag, p, len| {
                        let want = pattern(1 + (i * 37) % 3000, i);
                        assert_eq!((tag as usize, len), (i, want.len()), "message {i}");
                        assert!(unsafe { std::slice::from_raw_parts(p, len) } == &want[..]);
                    })
                    .unwrap();
                if got {
                    i += 1;
                } else {
                    assert!(t0.elapsed() < Duration::from_secs(30), "stuck at message {i}: not whole?");
                    std::thread::yield_now();
                }
            }
        });
    }

    /// Issue 17: connects are set up while the link's one data stream is
    /// flooded by connections streaming both ways (their bytes checked):
    /// every connect completes and carries a message each way. Connection
    /// set-up has a stream of its own, and an ACCEPT goes ahead of the
    /// data it can; the flood connections share one pump worker, taking
    /// turns a gather at a time.
    fn connects_complete_while_the_data_stream_is_flooded(t: Transport) {
        let two = Two::with_workers(t, 256 << 10, 1, 1);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        // Two flood connections each way: the CONNECTs' way (router 1 to
        // router 0) and the ACCEPTs' way. (sender, receiver) per connection.
        let mut flood: Vec<(Conn, Conn)> = (0..4)
            .map(|k| {
                let b = connect(&c1, &l.handle());
                let a = l.accept_timeout(Duration::from_secs(10)).unwrap();
                if k % 2 == 0 { (b, a) } else { (a, b) }
            })
            .collect();
        let stop = AtomicBool::new(false);
        let size = |i: usize| (64 << 10) + (i * 7919) % 4096;
        std::thread::scope(|sc| {
            let mut flows = Vec::new();
            for (k, (tx, rx)) in flood.iter_mut().enumerate() {
                let stop = &stop;
                let sent = sc.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Acquire) {
                        tx.send(&pattern(size(i), i + k * 100_000), 1, T).unwrap_or_else(|e| panic!("flood {k}: send {i}: {e}"));
                        i += 1;
                    }
                    tx.send(&[], 1, T).unwrap();
                    i
                });
                let got = sc.spawn(move || {
                    let mut buf = vec![0u8; 128 << 10];
                    let mut i = 0;
                    loop {
                        let n = rx.recv(&mut buf, 1, T).unwrap_or_else(|e| panic!("flood {k}: receive {i}: {e}"));
                        if n == 0 {
                            return i;
                        }
                        assert!(buf[..n] == pattern(size(i), i + k * 100_000)[..], "flood {k}: message {i} differs");
                        i += 1;
                    }
                });
                flows.push((sent, got));
            }
            // The flood is under way on every connection.
            std::thread::sleep(Duration::from_millis(300));
            for j in 0..20 {
                let mut b = connect(&c1, &l.handle());
                let mut a = l.accept_timeout(Duration::from_secs(20)).unwrap();
                let mut buf = vec![0u8; 4096];
                b.send(&pattern(100 + j, j), 7, T).unwrap();
                let n = a.recv(&mut buf, 7, T).unwrap();
                assert!(buf[..n] == pattern(100 + j, j)[..], "connect {j}: request");
                a.send(&pattern(200 + j, j + 1), 8, T).unwrap();
                let n = b.recv(&mut buf, 8, T).unwrap();
                assert!(buf[..n] == pattern(200 + j, j + 1)[..], "connect {j}: answer");
            }
            stop.store(true, Ordering::Release);
            for (k, (sent, got)) in flows.into_iter().enumerate() {
                let (sent, got) = (sent.join().unwrap(), got.join().unwrap());
                assert!(sent > 0, "flood {k} moved nothing");
                assert_eq!(sent, got, "flood {k}: messages lost");
            }
        });
    }

    #[test]
    fn connects_complete_while_the_data_stream_is_flooded_over_tcp() {
        connects_complete_while_the_data_stream_is_flooded(Transport::Tcp);
    }

    #[test]
    fn connects_complete_while_the_data_stream_is_flooded_over_fake_rdma() {
        connects_complete_while_the_data_stream_is_flooded(Transport::FakeRdma { delay_ms: 0, setup_ms: 0, kb_s: 0 });
    }

    #[test]
    fn a_slow_receiver_does_not_stall_other_connections_on_the_link() {
        // One stream, two connections: the first's receiver never reads
        // (its sender fills the credit and stops); the second still flows.
        let two = Two::with_streams(Transport::Tcp, 16 << 10, 1);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let mut stuck_tx = connect(&c1, &l.handle());
        let _stuck_rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
        let mut tx = connect(&c1, &l.handle());
        let mut rx = l.accept_timeout(Duration::from_secs(10)).unwrap();
        let big = vec![3u8; 1 << 20];
        let r = unsafe { stuck_tx.isend(big.as_ptr(), big.len(), 0).unwrap() };
        std::thread::sleep(Duration::from_millis(200));
        assert!(stuck_tx.test(r).unwrap().is_none(), "1 MiB cannot fit 16 KiB of rings and credit");
        let msg = pattern(100_000, 1);
        let mut got = vec![0u8; 100_000];
        let sent = std::thread::scope(|sc| {
            let h = sc.spawn(|| tx.send(&msg, 0, T).unwrap());
            assert_eq!(rx.recv(&mut got, 0, T).unwrap(), 100_000);
            h.join().unwrap()
        });
        assert_eq!(sent, 100_000);
        assert!(got == msg);
        drop(stuck_tx);
    }

    #[test]
    fn a_receiver_reading_a_frame_holds_up_no_other_stream() {
        // Issue 17 (links died under load): a receiver thread holds its
        // connection's `inb` while it reads a frame's payload from the
        // link, for as long as the peer router takes to send the rest. If
        // another thread waited for that lock - the receiver of another
        // stream covering the connection (same client), or the pump worker
        // - it stopped too; a receiver that stops reading its stream leaves
        // the peer's senders on that stream waiting, and they were the
        // ones to send the rest of the first frame: TCP's zero window then
        // ended the link. Here the test holds connection X's `inb` on
        // router 0, as its receiver does mid-frame, while Y, a connection
        // of the same client on the other data stream, carries more than
        // its ring both ways: router 0's receiver for Y covers X, and one
        // pump worker serves both. Before the fix, Y stopped at once
        // (its sends timed out).
        let two = Two::with_workers(Transport::Tcp, 16 << 10, 2, 1);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let mut bx = connect(&c1, &l.handle());
        let mut ax = l.accept_timeout(Duration::from_secs(10)).unwrap();
        let mut by = connect(&c1, &l.handle());
        let mut ay = l.accept_timeout(Duration::from_secs(10)).unwrap();
        let r0 = two.remote(0);
        let fwd = |id: u64| r0.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).find(|f| f.local == id).expect("router 0 forwards it");
        let (fx, fy) = (fwd(ax.id()), fwd(ay.id()));
        assert_ne!(fx.stream(), fy.stream(), "X and Y on different data streams");
        let mut buf = vec![0u8; 20_000];
        let held = fx.inb.lock().unwrap();
        for i in 0..40 {
            by.send(&pattern(10_000 + i, i), 1, T).unwrap_or_else(|e| panic!("Y, message {i} to router 0: {e}"));
            assert_eq!(ay.recv(&mut buf, 1, T).unwrap(), 10_000 + i);
            assert!(buf[..10_000 + i] == pattern(10_000 + i, i)[..], "Y, message {i}");
            ay.send(&pattern(9_000 + i, i + 1), 2, T).unwrap_or_else(|e| panic!("Y, answer {i} from router 0: {e}"));
            assert_eq!(by.recv(&mut buf, 2, T).unwrap(), 9_000 + i);
            assert!(buf[..9_000 + i] == pattern(9_000 + i, i + 1)[..], "Y, answer {i}");
        }
        drop(held);
        // X was only held up, not broken: more than its ring goes through.
        for i in 0..5 {
            bx.send(&pattern(12_000, i), 3, T).unwrap();
            assert_eq!(ax.recv(&mut buf, 3, T).unwrap(), 12_000);
            assert!(buf[..12_000] == pattern(12_000, i)[..], "X, message {i}");
        }
    }

    #[test]
    fn a_receive_posted_while_a_frame_is_written_is_taken_at_once() {
        // A receiver thread holds its connection's `inb` for a whole frame
        // (a megabyte being written into a posted receive). A receive the
        // client posts meanwhile - a GET's, with the GET right behind it
        // in the ring - is taken at once: it used to stay in the ring
        // until the frame was done, and the GET behind it with it, so
        // GETs issued back to back went one round trip at a time. Here
        // the test holds `inb` as that receiver does; the post is taken,
        // and the message behind it on the other connection goes out.
        let two = Two::new(Transport::Tcp, 1 << 20);
        let ([c0, _c1], mut a, mut b) = conn_pair(&two);
        let r0 = two.remote(0);
        let fx = r0.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).find(|f| f.local == a.id()).expect("router 0 forwards it");
        let n = 256 << 10;
        let dst = c0.alloc_region(n).unwrap();
        let held = fx.inb.lock().unwrap();
        // SAFETY: the region holds n bytes, ours alone until the request ends.
        let r = unsafe { a.irecv(dst.as_ptr(), n, 5) }.unwrap();
        a.send(b"after the post", 6, T).unwrap();
        let mut got = [0u8; 32];
        assert_eq!(b.recv(&mut got, 6, T).unwrap(), 14, "the message behind the post went out");
        assert_eq!(fx.posts.lock().unwrap().queue.len(), 1, "the post was taken while the receiver held inb");
        drop(held);
        let msg = pattern(n, 9);
        b.send(&msg, 5, T).unwrap();
        assert_eq!(a.wait(r, T).unwrap(), n);
        // SAFETY: the request is done; the region holds n bytes.
        assert!(unsafe { std::slice::from_raw_parts(dst.as_ptr(), n) } == &msg[..]);
        assert_eq!(a.placed(), 1, "written straight into the posted receive");
    }

    #[test]
    fn hundreds_of_connections_share_a_few_pump_workers() {
        // Issue 17: 300 connections between two routers with one pump
        // worker each by default: every worker serves at most PER_WORKER
        // connections (one futex_waitv), so 3 start, whatever the number of
        // connections. Small messages both ways on every connection, every
        // byte checked; then again after all slept; then all close.
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            // Both routers and all clients share this process's descriptors.
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 16).max(soft), hard);
        }
        const N: usize = 300;
        let two = Two::with_workers(Transport::Tcp, 16 << 10, 2, 1);
        let (c0, c1) = (two.ctx(0), two.ctx(1));
        let l = c0.listen().unwrap();
        let mut pairs: Vec<(Conn, Conn)> = (0..N)
            .map(|_| {
                let b = connect(&c1, &l.handle());
                (l.accept_timeout(Duration::from_secs(10)).unwrap(), b)
            })
            .collect();
        let want = N.div_ceil(pumps::PER_WORKER);
        assert_eq!((two.pump_threads(0), two.pump_threads(1)), (want, want), "pump workers for {N} connections");
        // Each worker has about as many connections on each data stream
        // (its turns give a stream to one of them at a time).
        for i in 0..2 {
            let per = two.remote(i).pumps.on_streams(2);
            eprintln!("router {i}: connections per worker and data stream: {per:?}");
            for (w, n) in per.iter().enumerate() {
                assert!(n[0].abs_diff(n[1]) <= 2, "router {i}, worker {w}: {n:?} connections on data streams 0 and 1");
            }
        }
        let mut buf = vec![0u8; 4096];
        for round in 0..2 {
            for (i, (_, b)) in pairs.iter_mut().enumerate() {
                b.send(&pattern(1 + (i * 37 + round) % 700, i + round), 1, T).unwrap();
            }
            for (i, (a, _)) in pairs.iter_mut().enumerate() {
                let n = a.recv(&mut buf, 1, T).unwrap();
                assert!(buf[..n] == pattern(1 + (i * 37 + round) % 700, i + round)[..], "connection {i}, round {round}: request");
                a.send(&pattern(1 + (i * 53 + round) % 900, i + 7 + round), 2, T).unwrap();
            }
            for (i, (_, b)) in pairs.iter_mut().enumerate() {
                let n = b.recv(&mut buf, 2, T).unwrap();
                assert!(buf[..n] == pattern(1 + (i * 53 + round) % 900, i + 7 + round)[..], "connection {i}, round {round}: answer");
            }
            // Longer than the workers' spin: every connection goes to sleep.
            std::thread::sleep(Duration::from_millis(100));
        }
        // Idle: every worker backs off to its longest nap (nothing to wake
        // in its looks); then every connection still carries a message each
        // way, checked, woken by its word and not by a look.
        let t0 = Instant::now();
        loop {
            let naps: Vec<Duration> = (0..2).flat_map(|i| two.remote(i).pumps.naps()).collect();
            if naps.iter().all(|&n| n == nap_max()) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "workers' naps while idle: {naps:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        for (i, (_, b)) in pairs.iter_mut().enumerate() {
            b.send(&pattern(1 + (i * 41) % 800, i + 11), 4, T).unwrap();
        }
        for (i, (a, _)) in pairs.iter_mut().enumerate() {
            let n = a.recv(&mut buf, 4, T).unwrap();
            assert!(buf[..n] == pattern(1 + (i * 41) % 800, i + 11)[..], "connection {i}, after the long naps: request");
            a.send(&pattern(1 + (i * 59) % 900, i + 13), 5, T).unwrap();
        }
        for (i, (_, b)) in pairs.iter_mut().enumerate() {
            let n = b.recv(&mut buf, 5, T).unwrap();
            assert!(buf[..n] == pattern(1 + (i * 59) % 900, i + 13)[..], "connection {i}, after the long naps: answer");
        }
        drop(pairs);
        for c in [&c0, &c1] {
            let t0 = Instant::now();
            while c.stats().unwrap().conns != 0 {
                assert!(t0.elapsed() < Duration::from_secs(20), "connections not freed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert_eq!((two.pump_threads(0), two.pump_threads(1)), (want, want), "workers stay");
    }
}
