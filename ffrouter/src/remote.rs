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
use crate::state::{scaled_ring, Outcome, State};
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

    /// Bytes of connection rings registered with RDMA NICs now, over every
    /// link (pinned memory; an idle ring is let go of before it is trimmed).
    pub fn nic_pinned_bytes(&self) -> usize {
        let fwds: Vec<Arc<Fwd>> = self.by_client.lock().unwrap().values().flatten().filter_map(Weak::upgrade).collect();
        let mut links: Vec<Arc<dyn Link>> = fwds.iter().filter_map(|f| f.pins.get().and_then(Weak::upgrade)).collect();
        let key = |l: &Arc<dyn Link>| Arc::as_ptr(l) as *const () as usize;
        links.sort_by_key(key);
        links.dedup_by_key(|l| key(l));
        links.iter().map(|l| l.pinned_bytes()).sum()
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
                (kb_s > 0).then_some(kb_s as f64 * 1000.0),
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
        if let Err(e) = f.register(link) {
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
mod tests;
