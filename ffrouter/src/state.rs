//! The router's bookkeeping: clients, listeners, connections and shadow
//! regions, each owned by one client of one tenant. Every request is checked
//! against ownership and tenant here; this module does no I/O.
//!
//! Resources are capped at three levels: per client (shared bytes and
//! objects), per tenant (descriptors and threads: each tenant may hold at
//! most its share, `1/tenants` of the router's, so one tenant at its limits
//! leaves the others theirs) and for the router (the sum of the shares).
//! What each thing costs the router:
//!
//! | | descriptors | threads |
//! |---|---|---|
//! | a client (control socket, client page; its service thread) | 2 | 1 |
//! | a shadow region, a connection on this host (its memfd) | 1 | 0 |
//! | a connection to another host (memfd, liveness lock; pump workers are shared) | 2 | 0 |

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ffcore::error::ErrorCode;
use ffcore::proto::{self, Reply, Request, Stats};
use ffcore::page::Page;
use ffcore::ring;
use ffcore::shm::{self, SharedMem};
use std::sync::atomic::Ordering;

/// Limits that keep one client from exhausting the host.
#[derive(Debug, Clone)]
pub struct Limits {
    pub ring_size: usize,
    /// Ring bytes (per direction) a tenant's same-host connections get in
    /// all before its new ones get smaller rings (`--ring-budget`, see
    /// [`LOCAL_RING_BUDGET`]).
    pub ring_budget: usize,
    /// Shared memory (rings + regions) one client may hold.
    pub max_client_bytes: u64,
    /// Listeners + connections + regions one client may hold.
    pub max_client_objects: usize,
    /// Connections waiting in one listener's accept queue.
    pub max_backlog: usize,
    /// Send rate limits in bytes/s: by tenant (applies to each container of
    /// the tenant) and by container (PID-namespace inode; overrides).
    pub rates: Rates,
    /// Descriptors and threads the router may spend on tenants, all
    /// together; each tenant may use `1/tenants` of them.
    pub max_fds: usize,
    pub max_threads: usize,
    pub tenants: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub tenant: HashMap<String, u64>,
    pub container: HashMap<u64, u64>,
}

/// What a thing costs the router: (descriptors, threads).
pub type Cost = (usize, usize);
pub const CLIENT_COST: Cost = (2, 1);
pub const LOCAL_COST: Cost = (1, 0);
pub const FORWARDED_COST: Cost = (2, 0);

/// Default `--ring-budget`: 64 same-host connections of a tenant get
/// 4 MiB rings; more get smaller ones, as connections to other hosts do
/// under `--peer-ring-budget` ([`scaled_ring`]: at least
/// 1 MiB). Without it, 512 same-host pairs streaming committed about 2 GB
/// of rings, with it 770 MiB; see docs/data-path.md ("Memory per
/// connection") for what it does to their bandwidth and fairness.
pub const LOCAL_RING_BUDGET: usize = 256 << 20;

/// The smallest ring [`scaled_ring`] hands out
/// ([`ffcore::ring::MIN_SCALED_RING`], 1 MiB): more than a pump's turn among
/// busy connections (`Quantum::Turn`, one 512 KiB gather by default), so
/// that a busy connection can fill its turn, and what transports that size
/// records by one connection count on (UCX's 128 KiB segments need rings of
/// more than 512 KiB).
pub const SCALED_RING_MIN: usize = ffcore::ring::MIN_SCALED_RING;

/// Ring size for a new connection while its tenant has `open` others of
/// the same kind (a budget per tenant: one tenant's connections never
/// shrink another's rings; same-host connections with `--ring-size` and
/// `--ring-budget`, by `State::connect`, those to other hosts with
/// `--peer-ring-size` and `--peer-ring-budget`, by `crate::remote`): `max`
/// while `budget / (open + 1)` is at least `max`;
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
/// hosts), and while all stream, those with bigger rings would move more
/// per turn: between hosts the pumps share the link by turns, and on one
/// host a client fills each of its rings only to half the smallest while
/// their sizes differ (`ffcore::conn::share`).
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

impl Limits {
    /// The descriptors and threads one tenant may hold.
    pub fn tenant_share(&self) -> Cost {
        let t = self.tenants.max(1);
        (self.max_fds / t, self.max_threads / t)
    }
}

impl Rates {
    pub fn is_empty(&self) -> bool {
        self.tenant.is_empty() && self.container.is_empty()
    }

    fn lookup(&self, tenant: &str, container: u64) -> Option<u64> {
        self.container.get(&container).or_else(|| self.tenant.get(tenant)).copied()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ring_size: 4 << 20,
            ring_budget: LOCAL_RING_BUDGET,
            max_client_bytes: 64 << 30,
            max_client_objects: 65536,
            max_backlog: 4096,
            rates: Rates::default(),
            max_fds: 16384,
            max_threads: 4096,
            tenants: 1,
        }
    }
}

/// A token bucket shared by the clients of one container.
struct Bucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

struct Client {
    tenant: Arc<str>,
    page: Arc<Page>,
    /// The client's container (PID-namespace inode; 0 if unknown) and
    /// whether its sends are rate limited.
    container: u64,
    limited: bool,
    listeners: HashSet<u64>,
    conns: HashSet<u64>,
    regions: HashSet<u64>,
    bytes: u64,
}

impl Client {
    fn objects(&self) -> usize {
        self.listeners.len() + self.conns.len() + self.regions.len()
    }
}

struct ListenerRec {
    owner: u64,
    tenant: Arc<str>,
    nonce: u64,
    backlog: VecDeque<u64>,
}

struct ConnRec {
    tenant: Arc<str>,
    /// What it costs its tenant (local or forwarded).
    cost: Cost,
    mem: Arc<SharedMem>,
    /// The client holding each side, while it holds it.
    ends: [Option<u64>; 2],
    /// Still in a listener's accept queue.
    queued: bool,
}

struct RegionRec {
    owner: u64,
    tenant: Arc<str>,
    /// Random: what a peer must name, beside the id, to map the region
    /// read-write or read-only.
    key: u64,
    read_key: u64,
    mem: Arc<SharedMem>,
}

/// What the I/O layer sends back: a reply and maybe one shared file
/// (`read_only`: opened anew read-only, so the receiver cannot map it
/// writable).
pub struct Outcome {
    pub reply: Reply,
    pub fd: Option<Arc<SharedMem>>,
    pub read_only: bool,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome { reply, fd: None, read_only: false }
    }
}

/// A new, initialised connection file with rings of `ring_size` bytes;
/// `forwarded` when this router plays one side and forwards it to another
/// host ([`ring::FLAG_FORWARDED`]).
fn new_conn_file(ring_size: usize, forwarded: bool) -> Result<Arc<SharedMem>, (ErrorCode, String)> {
    let mem = SharedMem::create("ff-conn", ring::file_len(ring_size))
        .map_err(|e| (ErrorCode::Internal, format!("cannot allocate a connection: {e}")))?;
    ring::init(&mem, ring_size);
    if forwarded {
        ring::set_flags(&mem, ring::FLAG_FORWARDED);
    }
    Ok(Arc::new(mem))
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Outcome {
    proto::error_reply(code, msg).into()
}

pub struct State {
    pub router_id: [u8; 16],
    /// Where other hosts' routers reach this one (put into handles); set
    /// by the I/O layer when it listens for them (see [`crate::remote`]).
    pub advertise: Option<proto::NetAddr>,
    limits: Limits,
    next_id: u64,
    clients: HashMap<u64, Client>,
    listeners: HashMap<u64, ListenerRec>,
    conns: HashMap<u64, ConnRec>,
    regions: HashMap<u64, RegionRec>,
    requests: u64,
    errors: u64,
    /// Requests and refusals per tenant.
    tenant_requests: HashMap<Arc<str>, (u64, u64)>,
    /// Descriptors and threads each tenant holds.
    usage: HashMap<Arc<str>, Cost>,
    buckets: HashMap<(Arc<str>, u64), Bucket>,
}

/// One connection direction's counters, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub conn: u64,
    pub tenant: Arc<str>,
    /// The sending side (0 = connector, 1 = acceptor).
    pub side: usize,
    pub bytes: u64,
    pub messages: u64,
    pub queued: u64,
}

impl State {
    pub fn new(limits: Limits) -> State {
        State {
            router_id: rand::random(),
            advertise: None,
            limits,
            next_id: 1,
            clients: HashMap::new(),
            listeners: HashMap::new(),
            conns: HashMap::new(),
            regions: HashMap::new(),
            requests: 0,
            errors: 0,
            tenant_requests: HashMap::new(),
            usage: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// Records which container a client runs in, and applies its rate limit.
    pub fn set_container(&mut self, client: u64, container: u64) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.container = container;
        let Some(rate) = self.limits.rates.lookup(&c.tenant, container) else { return };
        c.limited = true;
        // Bursts of 5 ms of traffic, and at least a few ring fragments.
        let burst = (rate / 200).max(256 << 10);
        let b = self.buckets.entry((c.tenant.clone(), container)).or_insert(Bucket {
            rate,
            burst,
            tokens: burst as f64,
            last: Instant::now(),
        });
        let first = b.tokens.min(burst as f64);
        b.tokens -= first;
        c.page.set_credit(c.page.sent() + first as u64);
        crate::limited!(info, "rate-limited", &c.tenant, "client {client}: send rate limited to {rate} bytes/s (container {container})");
    }

    /// Tops up the credit of rate-limited clients (call every millisecond or
    /// so). Each container's bucket fills at its rate, up to its burst, and
    /// is shared out among its clients that have room for more credit.
    pub fn qos_tick(&mut self, now: Instant) {
        for ((tenant, container), b) in self.buckets.iter_mut() {
            let dt = now.saturating_duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + dt * b.rate as f64).min(b.burst as f64);
            let mut hungry: Vec<&Client> = self
                .clients
                .values()
                .filter(|c| c.limited && c.container == *container && c.tenant == *tenant && c.page.allowance() < b.burst)
                .collect();
            hungry.sort_by_key(|c| c.page.allowance());
            let n = hungry.len();
            for (i, c) in hungry.into_iter().enumerate() {
                let share = (b.tokens / (n - i) as f64).floor();
                let room = (b.burst - c.page.allowance().min(b.burst)) as f64;
                let g = share.min(room);
                if g >= 1.0 {
                    c.page.set_credit(c.page.credit().saturating_add(g as u64));
                    b.tokens -= g;
                }
            }
        }
    }

    /// Does any client need [`State::qos_tick`]?
    pub fn has_rate_limits(&self) -> bool {
        !self.limits.rates.is_empty()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes `cost` from `tenant`'s share, or says why not.
    fn charge(&mut self, tenant: &Arc<str>, cost: Cost) -> Result<(), (ErrorCode, String)> {
        let (fds, threads) = self.limits.tenant_share();
        let u = self.usage.get(tenant).copied().unwrap_or_default();
        if u.0 + cost.0 > fds {
            return Err((ErrorCode::ResourceExhausted, format!("tenant {tenant} holds {} of its {fds} descriptors", u.0)));
        }
        if u.1 + cost.1 > threads {
            return Err((ErrorCode::ResourceExhausted, format!("tenant {tenant} uses {} of its {threads} threads", u.1)));
        }
        let u = self.usage.entry(tenant.clone()).or_default();
        u.0 += cost.0;
        u.1 += cost.1;
        Ok(())
    }

    fn uncharge(&mut self, tenant: &Arc<str>, cost: Cost) {
        if let Some(u) = self.usage.get_mut(tenant) {
            u.0 -= cost.0;
            u.1 -= cost.1;
            if *u == (0, 0) {
                self.usage.remove(tenant);
            }
        }
    }

    /// A new connection file charged to `tenant` (nothing charged if it
    /// cannot be made).
    fn charged_conn_file(&mut self, tenant: &Arc<str>, cost: Cost, ring_size: usize, forwarded: bool) -> Result<Arc<SharedMem>, (ErrorCode, String)> {
        self.charge(tenant, cost)?;
        new_conn_file(ring_size, forwarded).inspect_err(|_| self.uncharge(tenant, cost))
    }

    /// Descriptors and threads `tenant` holds now.
    pub fn usage(&self, tenant: &str) -> Cost {
        self.usage.get(tenant).copied().unwrap_or_default()
    }

    /// A new client on a tenant's socket (refused when the tenant has no
    /// descriptors or threads left for it).
    pub fn add_client(&mut self, tenant: Arc<str>) -> Result<u64, (ErrorCode, String)> {
        self.charge(&tenant, CLIENT_COST)?;
        let page = match Page::create() {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.uncharge(&tenant, CLIENT_COST);
                return Err((ErrorCode::Internal, format!("cannot make the client page: {e}")));
            }
        };
        let id = self.id();
        self.clients.insert(
            id,
            Client {
                tenant,
                page,
                container: 0,
                limited: false,
                listeners: HashSet::new(),
                conns: HashSet::new(),
                regions: HashSet::new(),
                bytes: 0,
            },
        );
        Ok(id)
    }

    /// The reply to `Hello`, with the client's page.
    pub fn welcome(&self, client: u64) -> (Reply, Arc<Page>) {
        let c = &self.clients[&client];
        let reply = Reply::Welcome {
            client,
            tenant: c.tenant.to_string(),
            router_id: self.router_id,
            ring_size: self.limits.ring_size as u64,
            advertise: self.advertise,
        };
        (reply, c.page.clone())
    }

    /// Handles one request from `client`.
    pub fn handle(&mut self, client: u64, req: Request) -> Outcome {
        let out = self.dispatch(client, req);
        self.count(client, &out);
        out
    }

    /// Counts a request of `client` that was answered `out` (also those
    /// answered elsewhere: connects to other hosts).
    pub fn count(&mut self, client: u64, out: &Outcome) {
        let failed = matches!(out.reply, Reply::Error { .. });
        self.requests += 1;
        self.errors += failed as u64;
        if let Some(c) = self.clients.get(&client) {
            let t = self.tenant_requests.entry(c.tenant.clone()).or_default();
            t.0 += 1;
            t.1 += failed as u64;
        }
    }

    fn dispatch(&mut self, client: u64, req: Request) -> Outcome {
        let tenant = self.clients[&client].tenant.clone();
        match req {
            Request::Hello { .. } => err(ErrorCode::BadRequest, "already attached"),
            Request::Listen => {
                if let Some(o) = self.check_quota(client, 0) {
                    return o;
                }
                let id = self.id();
                let nonce = rand::random();
                self.listeners.insert(id, ListenerRec { owner: client, tenant, nonce, backlog: VecDeque::new() });
                self.client(client).listeners.insert(id);
                Reply::Listening { listener: id, nonce }.into()
            }
            Request::Connect { router_id, listener, nonce } => self.connect(client, &tenant, router_id, listener, nonce),
            Request::Accept { listener } => self.accept(client, listener),
            Request::CloseListener { listener } => match self.listeners.get(&listener) {
                Some(l) if l.owner == client => {
                    self.close_listener(listener);
                    Reply::Ok.into()
                }
                _ => err(ErrorCode::NotFound, format!("no listener {listener} of yours")),
            },
            Request::CloseConn { conn } => match self.conns.get(&conn).and_then(|c| c.ends.iter().position(|e| *e == Some(client))) {
                Some(side) => {
                    self.release_end(conn, side);
                    Reply::Ok.into()
                }
                None => err(ErrorCode::NotFound, format!("no connection {conn} of yours")),
            },
            Request::AllocRegion { len } => {
                let file_len = len + shm::region_header() as u64;
                if let Some(o) = self.check_quota(client, file_len) {
                    return o;
                }
                if let Err((code, msg)) = self.charge(&tenant, LOCAL_COST) {
                    return err(code, msg);
                }
                let mem = match SharedMem::create("ff-region", file_len as usize) {
                    Ok(m) => Arc::new(m),
                    Err(e) => {
                        self.uncharge(&tenant, LOCAL_COST);
                        return err(ErrorCode::Internal, format!("cannot allocate {len} bytes: {e}"));
                    }
                };
                mem.region_state().store(shm::REGION_LIVE, Ordering::Release);
                let (id, key, read_key) = (self.id(), rand::random(), rand::random());
                self.regions.insert(id, RegionRec { owner: client, tenant, key, read_key, mem: mem.clone() });
                let c = self.client(client);
                c.regions.insert(id);
                c.bytes += file_len;
                Outcome { reply: Reply::Region { region: id, len, key, read_key }, fd: Some(mem), read_only: false }
            }
            // Any client of the tenant that names id and key; everything
            // else (other tenants, wrong keys, freed regions) gets the same
            // answer. The mapping costs the router nothing: the file is the
            // owner's, already counted.
            Request::MapRegion { region, key } => match self.granted(&tenant, region, key) {
                Some((mem, writable)) => {
                    let len = (mem.len() - shm::region_header()) as u64;
                    let reply = Reply::Region { region, len, key: 0, read_key: 0 };
                    Outcome { reply, fd: Some(mem.clone()), read_only: !writable }
                }
                None => err(ErrorCode::NotFound, format!("no region {region} with that key")),
            },
            Request::FreeRegion { region } => match self.regions.get(&region) {
                Some(r) if r.owner == client => {
                    self.free_region(region);
                    Reply::Ok.into()
                }
                _ => err(ErrorCode::NotFound, format!("no region {region} of yours")),
            },
            Request::Stats => Reply::Stats(self.stats(Some(&tenant))).into(),
            // Served by crate::remote when the router talks to other hosts.
            Request::ConnectRemote { .. } => err(
                ErrorCode::Unreachable,
                "the handle names a router on another host, and this router does not talk to other hosts (start it with --listen-addr)",
            ),
        }
    }

    fn client(&mut self, id: u64) -> &mut Client {
        self.clients.get_mut(&id).expect("client exists while it sends requests")
    }

    fn check_quota(&self, client: u64, bytes: u64) -> Option<Outcome> {
        let c = &self.clients[&client];
        if c.objects() >= self.limits.max_client_objects {
            return Some(err(ErrorCode::ResourceExhausted, format!("{} objects held (limit)", c.objects())));
        }
        if c.bytes + bytes > self.limits.max_client_bytes {
            return Some(err(
                ErrorCode::ResourceExhausted,
                format!("{} + {bytes} bytes of shared memory exceeds the {}-byte limit", c.bytes, self.limits.max_client_bytes),
            ));
        }
        None
    }

    fn connect(&mut self, client: u64, tenant: &Arc<str>, router_id: [u8; 16], listener: u64, nonce: u64) -> Outcome {
        if router_id != self.router_id {
            return err(ErrorCode::NotFound, "the handle names another router");
        }
        if let Err((code, msg)) = self.check_listener(listener, nonce, tenant, &format!("client {client}")) {
            return err(code, msg);
        }
        let ring_size = scaled_ring(self.limits.ring_size, self.limits.ring_budget, self.local(tenant));
        if let Some(o) = self.check_quota(client, ring::file_len(ring_size) as u64) {
            return o;
        }
        let mem = match self.charged_conn_file(tenant, LOCAL_COST, ring_size, false) {
            Ok(m) => m,
            Err((code, msg)) => return err(code, msg),
        };
        let id = self.add_conn(tenant.clone(), LOCAL_COST, mem.clone(), Some(client), Some(listener));
        // Both rings are the clients': trimmed when idle (crate::trim).
        let watched: std::sync::Weak<SharedMem> = Arc::downgrade(&mem);
        crate::trim::watch(watched);
        Outcome { reply: Reply::Connected { conn: id, side: 0, ring_size: ring_size as u64, forwarded: false }, fd: Some(mem), read_only: false }
    }

    /// What every connect checks of its listener, local or from another
    /// host: it exists, the nonce matches, the tenant matches (`who` names
    /// the connecting party in the log) and its backlog has room.
    fn check_listener(&self, listener: u64, nonce: u64, tenant: &str, who: &str) -> Result<(), (ErrorCode, String)> {
        let Some(l) = self.listeners.get(&listener) else {
            return Err((ErrorCode::NotFound, format!("no listener {listener}")));
        };
        if l.nonce != nonce {
            return Err((ErrorCode::NotFound, format!("no listener {listener} with that handle (forged or stale)")));
        }
        if &*l.tenant != tenant {
            crate::limited!(warn, "cross-tenant", tenant, "{who} of tenant {tenant} tried to connect to tenant {}'s listener {listener}", l.tenant);
            return Err((ErrorCode::PermissionDenied, "the listener belongs to another tenant".into()));
        }
        if l.backlog.len() >= self.limits.max_backlog {
            return Err((ErrorCode::ResourceExhausted, "listener backlog is full".into()));
        }
        Ok(())
    }

    /// Records a new connection (its cost already charged to `tenant`):
    /// side 0 held by `connector` (None: the router plays it), queued for
    /// acceptance on `listener` if given.
    fn add_conn(&mut self, tenant: Arc<str>, cost: Cost, mem: Arc<SharedMem>, connector: Option<u64>, listener: Option<u64>) -> u64 {
        let id = self.id();
        let bytes = mem.len() as u64;
        self.conns.insert(id, ConnRec { tenant, cost, mem, ends: [connector, None], queued: listener.is_some() });
        if let Some(l) = listener.and_then(|l| self.listeners.get_mut(&l)) {
            l.backlog.push_back(id);
            let owner = l.owner;
            self.clients[&owner].page.bump_accept();
        }
        if let Some(c) = connector {
            let c = self.client(c);
            c.conns.insert(id);
            c.bytes += bytes;
        }
        id
    }

    fn accept(&mut self, client: u64, listener: u64) -> Outcome {
        let Some(l) = self.listeners.get_mut(&listener).filter(|l| l.owner == client) else {
            return err(ErrorCode::NotFound, format!("no listener {listener} of yours"));
        };
        let Some(id) = l.backlog.pop_front() else {
            return Reply::NotReady.into();
        };
        let c = self.conns.get_mut(&id).expect("queued connections exist");
        c.queued = false;
        let len = c.mem.len() as u64;
        if let Some(o) = self.check_quota(client, len) {
            // No room to take it: the connector sees the acceptor side
            // closed, and the acceptor learns why.
            self.release_end(id, 1);
            return o;
        }
        let c = self.conns.get_mut(&id).expect("still there: side 0 is held or played");
        c.ends[1] = Some(client);
        let mem = c.mem.clone();
        // (The router's own record, not the file's flags: a local peer may
        // write those.)
        let forwarded = c.cost == FORWARDED_COST;
        let cl = self.client(client);
        cl.conns.insert(id);
        cl.bytes += len;
        let ring_size = ring::Layout::of_own(&mem).ring_size as u64;
        Outcome { reply: Reply::Connected { conn: id, side: 1, ring_size, forwarded }, fd: Some(mem), read_only: false }
    }

    /// The local half of a connection to a listener on another host: a
    /// connection file whose side 0 is `client`'s and whose side 1 the router
    /// plays (see [`crate::remote`]). Quotas apply as for a local connect.
    pub fn connect_out(&mut self, client: u64, ring_size: usize) -> Result<(u64, Arc<SharedMem>), Outcome> {
        if let Some(o) = self.check_quota(client, ring::file_len(ring_size) as u64) {
            return Err(o);
        }
        let tenant = self.clients[&client].tenant.clone();
        let mem = self.charged_conn_file(&tenant, FORWARDED_COST, ring_size, true).map_err(|(code, msg)| err(code, msg))?;
        let id = self.add_conn(tenant, FORWARDED_COST, mem.clone(), Some(client), None);
        Ok((id, mem))
    }

    /// A connection from another host to a local listener, on behalf of a
    /// peer router that claims the connector is in `tenant`: the same nonce
    /// and tenant checks as a local connect. The router plays side 0; the
    /// connection is queued for the listener's owner to accept as side 1.
    /// It is charged to the listener's tenant, and refused when the
    /// listener's owner could not accept it within its quota.
    /// Returns the connection, its file and the listener's owner.
    pub fn connect_in(&mut self, tenant: &str, listener: u64, nonce: u64, ring_size: usize) -> Result<(u64, Arc<SharedMem>, u64), (ErrorCode, String)> {
        self.check_listener(listener, nonce, tenant, "a remote client")?;
        let (tenant, owner) = (self.listeners[&listener].tenant.clone(), self.listeners[&listener].owner);
        if let Some(Outcome { reply: Reply::Error { code, message }, .. }) = self.check_quota(owner, ring::file_len(ring_size) as u64) {
            return Err((code, format!("the listener's owner: {message}")));
        }
        let mem = self.charged_conn_file(&tenant, FORWARDED_COST, ring_size, true)?;
        let id = self.add_conn(tenant, FORWARDED_COST, mem.clone(), None, Some(listener));
        Ok((id, mem, owner))
    }

    /// Lets go of `client`'s side of a connection made by [`State::connect_out`]
    /// that will not be handed out after all (the remote side refused).
    pub fn abandon_out(&mut self, client: u64, conn: u64) {
        if self.conns.get(&conn).is_some_and(|c| c.ends[0] == Some(client)) {
            self.release_end(conn, 0);
        }
    }

    pub fn ring_size(&self) -> usize {
        self.limits.ring_size
    }

    /// Connections of `tenant` this router forwards to other hosts now (it
    /// plays one side of each).
    pub fn forwarded(&self, tenant: &str) -> usize {
        self.conns_of(tenant, FORWARDED_COST)
    }

    /// Same-host connections of `tenant` open now.
    pub fn local(&self, tenant: &str) -> usize {
        self.conns_of(tenant, LOCAL_COST)
    }

    /// Connections of `tenant` of one kind (by their cost) open now.
    fn conns_of(&self, tenant: &str, cost: Cost) -> usize {
        self.conns.values().filter(|c| c.cost == cost && &*c.tenant == tenant).count()
    }

    /// A client lets go of one side: the peer is told through the shared
    /// closed flag; the file goes once nobody holds it.
    fn release_end(&mut self, conn: u64, side: usize) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if let Some(owner) = c.ends[side].take() {
            let bytes = c.mem.len() as u64;
            // A client may hold both ends (it connected to its own listener).
            let still_holds = c.ends.contains(&Some(owner));
            if let Some(cl) = self.clients.get_mut(&owner) {
                if !still_holds {
                    cl.conns.remove(&conn);
                }
                cl.bytes -= bytes;
            }
        }
        let c = &self.conns[&conn];
        // The router made this file: its layout needs no check of the
        // control page, which the client may have scribbled on. Whatever
        // it holds, the peer is told.
        ring::Layout::of_own(&c.mem).close(side);
        if c.ends.iter().all(Option::is_none) && !c.queued {
            if let Some(c) = self.conns.remove(&conn) {
                self.uncharge(&c.tenant, c.cost);
            }
        }
    }

    fn close_listener(&mut self, listener: u64) {
        let Some(l) = self.listeners.remove(&listener) else { return };
        if let Some(c) = self.clients.get_mut(&l.owner) {
            c.listeners.remove(&listener);
        }
        // Connections never accepted: the connector sees the acceptor side closed.
        for id in l.backlog {
            if let Some(c) = self.conns.get_mut(&id) {
                c.queued = false;
            }
            self.release_end(id, 1);
        }
    }

    fn free_region(&mut self, region: u64) {
        if let Some(r) = self.regions.remove(&region) {
            // Peers that mapped it see this before their next access.
            r.mem.region_state().store(shm::REGION_REVOKED, Ordering::Release);
            if let Some(c) = self.clients.get_mut(&r.owner) {
                c.regions.remove(&region);
                c.bytes -= r.mem.len() as u64;
            }
            self.uncharge(&r.tenant, LOCAL_COST);
        }
    }

    /// The region a client of `tenant` may reach with `key`, and whether
    /// read-write (its `key`) or only read (its `read_key`).
    fn granted(&self, tenant: &str, region: u64, key: u64) -> Option<(&Arc<SharedMem>, bool)> {
        let r = self.regions.get(&region).filter(|r| &*r.tenant == tenant)?;
        (r.key == key || r.read_key == key).then_some((&r.mem, r.key == key))
    }

    /// A region a client of `tenant` may read, named by id and either key
    /// (for forwarding the bytes a shadow-memory reference names).
    pub fn region_for(&self, tenant: &str, region: u64, key: u64) -> Option<Arc<SharedMem>> {
        self.granted(tenant, region, key).map(|(mem, _)| mem.clone())
    }

    /// A region a client of `tenant` may write, named by id and its
    /// read-write key (for receives posted in it).
    pub fn region_for_write(&self, tenant: &str, region: u64, key: u64) -> Option<Arc<SharedMem>> {
        self.granted(tenant, region, key).filter(|(_, write)| *write).map(|(mem, _)| mem.clone())
    }

    /// Frees everything a client held (it disconnected or died).
    pub fn remove_client(&mut self, client: u64) {
        let Some(c) = self.clients.get(&client) else { return };
        let listeners: Vec<u64> = c.listeners.iter().copied().collect();
        let conns: Vec<u64> = c.conns.iter().copied().collect();
        let regions: Vec<u64> = c.regions.iter().copied().collect();
        for l in listeners {
            self.close_listener(l);
        }
        for id in conns {
            for side in 0..2 {
                if self.conns.get(&id).is_some_and(|c| c.ends[side] == Some(client)) {
                    self.release_end(id, side);
                }
            }
        }
        for r in regions {
            self.free_region(r);
        }
        if let Some(c) = self.clients.remove(&client) {
            self.uncharge(&c.tenant, CLIENT_COST);
            let key = (c.tenant.clone(), c.container);
            if !self.clients.values().any(|o| o.tenant == key.0 && o.container == key.1) {
                self.buckets.remove(&key);
            }
        }
    }

    /// Per-connection, per-direction counters read from the shared control
    /// pages (values written by clients: for display only).
    pub fn conn_rows(&self) -> Vec<ConnRow> {
        let mut rows = Vec::new();
        for (&conn, c) in &self.conns {
            let lay = ring::Layout::of_own(&c.mem);
            for side in 0..2 {
                let (head, tail, messages) = lay.counters(side);
                rows.push(ConnRow {
                    conn,
                    tenant: c.tenant.clone(),
                    side,
                    bytes: head.saturating_sub(lay.rewound(side)),
                    messages,
                    queued: head.saturating_sub(tail),
                });
            }
        }
        rows.sort_by_key(|r| (r.conn, r.side));
        rows
    }

    /// Tenants with anything to report.
    pub fn tenants(&self) -> Vec<Arc<str>> {
        let mut t: Vec<Arc<str>> = self.clients.values().map(|c| c.tenant.clone()).chain(self.tenant_requests.keys().cloned()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Counters, for one tenant or (None) for the whole router.
    pub fn stats(&self, tenant: Option<&str>) -> Stats {
        let mine = |t: &Arc<str>| tenant.is_none_or(|x| &**t == x);
        let rows: Vec<ConnRow> = self.conn_rows().into_iter().filter(|r| mine(&r.tenant)).collect();
        let (requests, errors) = match tenant {
            None => (self.requests, self.errors),
            Some(t) => self.tenant_requests.get(t).copied().unwrap_or_default(),
        };
        let conn_bytes: u64 = self.conns.values().filter(|c| mine(&c.tenant)).map(|c| c.mem.len() as u64).sum();
        let region_bytes: u64 = self.regions.values().filter(|r| mine(&r.tenant)).map(|r| r.mem.len() as u64).sum();
        Stats {
            clients: self.clients.values().filter(|c| mine(&c.tenant)).count() as u64,
            listeners: self.listeners.values().filter(|l| mine(&l.tenant)).count() as u64,
            conns: self.conns.values().filter(|c| mine(&c.tenant)).count() as u64,
            regions: self.regions.values().filter(|r| mine(&r.tenant)).count() as u64,
            shared_bytes: conn_bytes + region_bytes,
            requests,
            errors,
            bytes_sent: rows.iter().map(|r| r.bytes).sum(),
            messages_sent: rows.iter().map(|r| r.messages).sum(),
            queued_bytes: rows.iter().map(|r| r.queued).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(o: Outcome) -> Option<ErrorCode> {
        match o.reply {
            Reply::Error { code, .. } => Some(code),
            _ => None,
        }
    }

    fn setup() -> (State, u64, u64, u64) {
        let mut st = State::new(Limits { ring_size: 4096, ..Limits::default() });
        let a1 = st.add_client("a".into()).unwrap();
        let a2 = st.add_client("a".into()).unwrap();
        let b1 = st.add_client("b".into()).unwrap();
        (st, a1, a2, b1)
    }

    fn listen(st: &mut State, c: u64) -> (u64, u64) {
        match st.handle(c, Request::Listen).reply {
            Reply::Listening { listener, nonce } => (listener, nonce),
            r => panic!("{r:?}"),
        }
    }

    fn ring_of(o: &Outcome) -> usize {
        match (&o.reply, &o.fd) {
            (Reply::Connected { ring_size, .. }, Some(mem)) => {
                assert_eq!(mem.len(), ring::file_len(*ring_size as usize), "the file holds the rings the reply names");
                *ring_size as usize
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn same_host_rings_shrink_past_the_tenants_budget_and_grow_back() {
        let mut st = State::new(Limits { ring_size: 4 << 20, ring_budget: 16 << 20, ..Limits::default() });
        let (a1, a2, b1) = (st.add_client("a".into()).unwrap(), st.add_client("a".into()).unwrap(), st.add_client("b".into()).unwrap());
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        let connect = |st: &mut State, c| ring_of(&st.handle(c, Request::Connect { router_id: rid, listener: l, nonce: n }));
        // 16 MiB / (open + 1): whole rings while they fit, then the largest
        // power of two below the share, never under 1 MiB.
        let rings: Vec<usize> = (0..40).map(|_| connect(&mut st, a2)).collect();
        assert_eq!(&rings[..4], &[4 << 20; 4]);
        assert_eq!(rings[4], 2 << 20, "16 MiB / 5");
        assert_eq!(rings[8], 1 << 20, "16 MiB / 9");
        assert!(rings[20..].iter().all(|&r| r == ring::MIN_SCALED_RING), "16 MiB / 21 is under the floor: {rings:?}");
        assert!(rings.windows(2).all(|w| w[0] >= w[1]));
        // The accepting side maps the same file.
        assert_eq!(ring_of(&st.handle(a1, Request::Accept { listener: l })), 4 << 20);
        // Another tenant's connections do not shrink this one's rings.
        let (lb, nb) = listen(&mut st, b1);
        assert_eq!(ring_of(&st.handle(b1, Request::Connect { router_id: rid, listener: lb, nonce: nb })), 4 << 20);
        // Once the tenant's connections close, new ones get whole rings again.
        let conns: Vec<u64> = st.conns.iter().filter(|(_, c)| &*c.tenant == "a").map(|(id, _)| *id).collect();
        assert_eq!(conns.len(), 40);
        for conn in conns {
            assert_eq!(code(st.handle(a2, Request::CloseConn { conn })), None);
            let _ = st.handle(a1, Request::CloseConn { conn });
        }
        assert_eq!(code(st.handle(a1, Request::CloseListener { listener: l })), None);
        assert_eq!(st.local("a"), 0);
        let (l, n) = listen(&mut st, a1);
        assert_eq!(ring_of(&st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n })), 4 << 20);
    }

    #[test]
    fn objects_of_other_clients_are_refused() {
        let (mut st, a1, a2, _) = setup();
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        let conn = match st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n }).reply {
            Reply::Connected { conn, side: 0, .. } => conn,
            r => panic!("{r:?}"),
        };
        let region = match st.handle(a1, Request::AllocRegion { len: 4096 }).reply {
            Reply::Region { region, .. } => region,
            r => panic!("{r:?}"),
        };
        // a2 may not accept on, close, or free a1's things.
        assert_eq!(code(st.handle(a2, Request::Accept { listener: l })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a2, Request::CloseListener { listener: l })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a2, Request::FreeRegion { region })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a1, Request::CloseConn { conn })), Some(ErrorCode::NotFound), "not accepted yet, so not a1's");
        // Ids of one kind are not accepted as another.
        assert_eq!(code(st.handle(a1, Request::FreeRegion { region: l })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a1, Request::CloseConn { conn: region })), Some(ErrorCode::NotFound));
        // The owner can.
        assert!(matches!(st.handle(a1, Request::Accept { listener: l }).reply, Reply::Connected { side: 1, .. }));
        assert_eq!(code(st.handle(a1, Request::FreeRegion { region })), None);
        // Stale ids after close/free.
        assert_eq!(code(st.handle(a1, Request::FreeRegion { region })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a2, Request::CloseConn { conn })), None);
        assert_eq!(code(st.handle(a2, Request::CloseConn { conn })), Some(ErrorCode::NotFound));
    }

    #[test]
    fn regions_map_for_their_tenant_with_their_key_until_freed() {
        let (mut st, a1, a2, b1) = setup();
        let out = st.handle(a1, Request::AllocRegion { len: 8192 });
        let (Reply::Region { region, len: 8192, key, read_key }, Some(mem)) = (out.reply, out.fd) else { panic!() };
        assert_ne!(key, read_key);
        assert_eq!(mem.len(), 8192 + shm::region_header());
        assert_eq!(mem.region_state().load(Ordering::Acquire), shm::REGION_LIVE);
        let out = st.handle(a2, Request::MapRegion { region, key });
        assert!(matches!(out.reply, Reply::Region { len: 8192, .. }), "{:?}", out.reply);
        assert!(Arc::ptr_eq(&out.fd.unwrap(), &mem), "the owner's file");
        assert!(!out.read_only);
        let out = st.handle(a2, Request::MapRegion { region, key: read_key });
        assert!(out.read_only && out.fd.is_some(), "the read key maps read-only");
        // Wrong key, other tenant, not a region: the same refusal.
        assert_eq!(code(st.handle(a2, Request::MapRegion { region, key: key ^ 1 })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(b1, Request::MapRegion { region, key })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a2, Request::MapRegion { region: region + 1, key })), Some(ErrorCode::NotFound));
        // Freed: revoked in the header every mapping sees, and unmappable.
        assert_eq!(code(st.handle(a1, Request::FreeRegion { region })), None);
        assert_eq!(mem.region_state().load(Ordering::Acquire), shm::REGION_REVOKED);
        assert_eq!(code(st.handle(a2, Request::MapRegion { region, key })), Some(ErrorCode::NotFound));
    }

    #[test]
    fn cross_tenant_forged_and_stale_handles_are_refused() {
        let (mut st, a1, a2, b1) = setup();
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        assert_eq!(code(st.handle(b1, Request::Connect { router_id: rid, listener: l, nonce: n })), Some(ErrorCode::PermissionDenied));
        assert_eq!(code(st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n ^ 1 })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a2, Request::Connect { router_id: [9; 16], listener: l, nonce: n })), Some(ErrorCode::NotFound));
        assert_eq!(code(st.handle(a1, Request::CloseListener { listener: l })), None);
        assert_eq!(code(st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n })), Some(ErrorCode::NotFound), "stale");
        assert_eq!(st.stats(Some("b")).conns, 0);
    }

    #[test]
    fn a_client_connected_to_itself_frees_both_ends() {
        // Found by the router_ops fuzz target: closing one end forgot that
        // the same client still held the other, which then leaked.
        let (mut st, a1, _, _) = setup();
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        let Reply::Connected { conn, .. } = st.handle(a1, Request::Connect { router_id: rid, listener: l, nonce: n }).reply else {
            panic!()
        };
        assert!(matches!(st.handle(a1, Request::Accept { listener: l }).reply, Reply::Connected { .. }));
        assert_eq!(code(st.handle(a1, Request::CloseConn { conn })), None);
        st.remove_client(a1);
        let s = st.stats(Some("a"));
        assert_eq!((s.conns, s.shared_bytes), (0, 0), "{s:?}");
    }

    #[test]
    fn quotas_hold_and_leaving_frees_everything() {
        let mut st = State::new(Limits { ring_size: 4096, max_client_bytes: 64 << 10, max_client_objects: 3, max_backlog: 1, ..Limits::default() });
        let a = st.add_client("a".into()).unwrap();
        let b = st.add_client("a".into()).unwrap();
        assert!(matches!(st.handle(a, Request::AllocRegion { len: 40 << 10 }).reply, Reply::Region { .. }));
        assert_eq!(code(st.handle(a, Request::AllocRegion { len: 40 << 10 })), Some(ErrorCode::ResourceExhausted), "bytes");
        let (l, n) = listen(&mut st, a);
        let rid = st.router_id;
        assert!(matches!(st.handle(b, Request::Connect { router_id: rid, listener: l, nonce: n }).reply, Reply::Connected { .. }));
        assert_eq!(code(st.handle(b, Request::Connect { router_id: rid, listener: l, nonce: n })), Some(ErrorCode::ResourceExhausted), "backlog");
        assert_eq!(code(st.handle(a, Request::Listen)), None);
        assert_eq!(code(st.handle(a, Request::Listen)), Some(ErrorCode::ResourceExhausted), "objects");
        st.remove_client(a);
        st.remove_client(b);
        let s = st.stats(None);
        assert_eq!((s.clients, s.listeners, s.conns, s.regions, s.shared_bytes), (0, 0, 0, 0, 0));
    }

    #[test]
    fn a_tenant_at_its_share_leaves_the_others_theirs() {
        // 2 tenants share 20 descriptors and 4 threads: 10 and 2 each.
        let mut st = State::new(Limits { ring_size: 4096, max_fds: 20, max_threads: 4, tenants: 2, ..Limits::default() });
        let a1 = st.add_client("a".into()).unwrap();
        let a2 = st.add_client("a".into()).unwrap();
        let e = st.add_client("a".into()).err().unwrap();
        assert_eq!(e.0, ErrorCode::ResourceExhausted, "{e:?}");
        assert!(e.1.contains("threads"), "{}", e.1);
        // 4 descriptors for two clients, 6 regions fill the rest.
        for _ in 0..6 {
            assert!(matches!(st.handle(a1, Request::AllocRegion { len: 4096 }).reply, Reply::Region { .. }));
        }
        assert_eq!(code(st.handle(a2, Request::AllocRegion { len: 4096 })), Some(ErrorCode::ResourceExhausted));
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        assert_eq!(code(st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n })), Some(ErrorCode::ResourceExhausted), "a connection needs a descriptor");
        assert_eq!(st.usage("a"), (10, 2));
        // Tenant b gets all of its own share.
        let b1 = st.add_client("b".into()).unwrap();
        let b2 = st.add_client("b".into()).unwrap();
        let (lb, nb) = listen(&mut st, b1);
        assert!(matches!(st.handle(b2, Request::Connect { router_id: rid, listener: lb, nonce: nb }).reply, Reply::Connected { .. }));
        assert_eq!(st.usage("b"), (5, 2));
        // Leaving gives everything back.
        for c in [a1, a2, b1, b2] {
            st.remove_client(c);
        }
        assert_eq!((st.usage("a"), st.usage("b")), ((0, 0), (0, 0)));
    }

    #[test]
    fn accepting_and_connections_from_other_hosts_are_charged() {
        let mut st = State::new(Limits { ring_size: 4096, max_client_bytes: 3 * ring::file_len(4096) as u64, ..Limits::default() });
        let a = st.add_client("a".into()).unwrap();
        let b = st.add_client("a".into()).unwrap();
        let (l, n) = listen(&mut st, a);
        let rid = st.router_id;
        // The acceptor fills its bytes with regions; a connection queued for
        // it cannot be accepted: the connector sees it closed.
        let Reply::Connected { conn, .. } = st.handle(b, Request::Connect { router_id: rid, listener: l, nonce: n }).reply else { panic!() };
        assert!(matches!(st.handle(a, Request::AllocRegion { len: (3 * ring::file_len(4096) - shm::region_header()) as u64 }).reply, Reply::Region { .. }));
        assert_eq!(code(st.handle(a, Request::Accept { listener: l })), Some(ErrorCode::ResourceExhausted));
        let mem = st.conns[&conn].mem.clone();
        assert!(ring::Layout::of_own(&mem).side(1).is_closed(), "the connector is told");
        // From another host: refused while the listener's owner has no room,
        // charged to its tenant (a descriptor pair) when it has.
        assert_eq!(st.connect_in("a", l, n, 4096).err().unwrap().0, ErrorCode::ResourceExhausted);
        st.remove_client(a);
        let a = st.add_client("a".into()).unwrap();
        let (l, n) = listen(&mut st, a);
        let before = st.usage("a");
        assert_eq!((st.forwarded("a"), st.forwarded("b")), (0, 0));
        let (id, _, owner) = st.connect_in("a", l, n, 4096).unwrap();
        assert_eq!(owner, a);
        assert_eq!((st.forwarded("a"), st.forwarded("b")), (1, 0), "counted for its tenant only");
        assert_eq!(st.usage("a"), (before.0 + FORWARDED_COST.0, before.1 + FORWARDED_COST.1));
        assert!(matches!(st.handle(a, Request::Accept { listener: l }).reply, Reply::Connected { conn, .. } if conn == id));
        st.remove_client(a);
        st.remove_client(b);
        assert_eq!(st.usage("a"), (0, 0));
        assert_eq!(st.forwarded("a"), 0, "a closed one is no longer counted");
    }

    #[test]
    fn a_scribbled_control_page_does_not_stop_the_close() {
        let (mut st, a1, a2, _) = setup();
        let (l, n) = listen(&mut st, a1);
        let rid = st.router_id;
        let Reply::Connected { conn, .. } = st.handle(a2, Request::Connect { router_id: rid, listener: l, nonce: n }).reply else { panic!() };
        assert!(matches!(st.handle(a1, Request::Accept { listener: l }).reply, Reply::Connected { .. }));
        let mem = st.conns[&conn].mem.clone();
        // The connector zeroes the control page (magic, size, flags), then leaves.
        unsafe { std::ptr::write_bytes(mem.as_ptr(), 0, 256) };
        st.remove_client(a2);
        assert!(ring::Layout::of_own(&mem).side(0).is_closed(), "the acceptor is told its peer left");
    }
}
