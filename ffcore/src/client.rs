//! The client side of the router protocol: a [`Context`] per process (one
//! control connection to the router), listeners, connections, registered
//! memory and shadow regions.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::fdpass::{recv_frame, send_frame};
use crate::handle::Handle;
use crate::page::{Page, PAGE_LEN};
use crate::proto::{self, Reply, Request, Stats, VERSION};
use crate::shm::SharedMem;

/// Where clients find their router unless `FF_ROUTER_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/freeflow/ffrouter.sock";
/// The router answers every request at once; a reply slower than this means
/// the router is stuck, and we report it rather than hang.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The router socket path from the environment, or the default.
pub fn socket_path() -> String {
    std::env::var("FF_ROUTER_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.to_string())
}

/// A connect to another host that the router answered "not yet" is asked
/// about again no sooner than this after the first answer, then after
/// twice as long each time, up to [`ASK_MAX`]: a caller polling
/// [`Context::connect`] in a tight loop (NCCL does) costs the router a
/// few requests per millisecond at first and then one per [`ASK_MAX`],
/// not one per call. Callers in between get `Ok(None)` at once.
pub const ASK_FIRST: Duration = Duration::from_micros(100);
pub const ASK_MAX: Duration = Duration::from_millis(2);
/// Connects to other hosts being waited for that are remembered; a caller
/// that gives up on one never says so, so beyond this many the oldest
/// ones are forgotten (which only costs them a request sooner).
const PENDING_MAX: usize = 1024;

/// State shared by a context and everything opened through it.
pub(crate) struct Shared {
    sock: Mutex<UnixStream>,
    pub(crate) router_id: [u8; 16],
    /// Shadow segments of this process by start address (see [`crate::mr`]).
    pub(crate) segments: Mutex<crate::mr::Segments>,
    /// Peers' shadow regions mapped here.
    pub(crate) maps: Mutex<crate::mr::Maps>,
    /// Pages to give back on an application thread (see
    /// [`crate::mr::progress_thread`]).
    pub(crate) give_back: Mutex<Vec<crate::mr::GiveBack>>,
    /// The rings of this context's same-host connections (see
    /// [`crate::conn::share`]).
    pub(crate) rings: Arc<crate::conn::share::RingSizes>,
}

impl Shared {
    /// One request, one reply (with any descriptors). Router refusals become
    /// [`Error::Router`].
    pub(crate) fn rpc(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let sent = send_frame(sock.as_fd(), &proto::encode(req), &[]);
        // A router that refuses us (say, our tenant is at its limits) says
        // why and hangs up, maybe before our request got there: its reply
        // is still there to read.
        let (_, body, fds) = match (sent, recv_frame(sock.as_fd())) {
            (_, Ok(Some(frame))) => frame,
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(None)) => return Err(Error::protocol("router closed the connection")),
        };
        match proto::decode_body::<Reply>(&body)? {
            Reply::Error { code, message } => Err(Error::Router { code, message }),
            r => Ok((r, fds)),
        }
    }

    pub(crate) fn close_conn(&self, conn: u64) -> Result<()> {
        self.rpc(&Request::CloseConn { conn }).map(|_| ())
    }
}

pub(crate) fn unexpected(r: Reply) -> Error {
    Error::protocol(format!("unexpected reply {r:?}"))
}

pub(crate) fn one_fd(fds: Vec<OwnedFd>) -> Result<OwnedFd> {
    let mut it = fds.into_iter();
    match (it.next(), it.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(Error::protocol("expected exactly one descriptor with the reply")),
    }
}

/// A registered memory range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemKey(pub u32);

/// One process's attachment to its router.
pub struct Context {
    shared: Arc<Shared>,
    client_id: u64,
    tenant: String,
    router_id: [u8; 16],
    /// Where other hosts' routers reach ours (goes into handles).
    advertise: Option<std::net::SocketAddr>,
    page: Arc<Page>,
    regs: Mutex<Registry>,
    /// Connects to other hosts answered "not yet": when each may ask again,
    /// and the wait after that (see [`ASK_FIRST`]).
    pending: Mutex<HashMap<PendingKey, (Instant, Duration)>>,
}

type PendingKey = ([u8; 16], u64, u64);

#[derive(Default)]
struct Registry {
    next: u32,
    ranges: BTreeMap<u32, (usize, usize)>,
}

impl Context {
    /// Attaches to the router at `FF_ROUTER_SOCKET` (or the default path).
    pub fn new() -> Result<Context> {
        Self::with_socket(&socket_path())
    }

    pub fn with_socket(path: &str) -> Result<Context> {
        let sock = UnixStream::connect(path).map_err(|source| Error::NoRouter { path: path.to_string(), source })?;
        sock.set_read_timeout(Some(RPC_TIMEOUT))?;
        sock.set_write_timeout(Some(RPC_TIMEOUT))?;
        let mut shared = Shared { sock: Mutex::new(sock), router_id: [0; 16], segments: Mutex::default(), maps: Mutex::default(), give_back: Mutex::default(), rings: Arc::default() };
        let (reply, fds) = shared.rpc(&Request::Hello { version: VERSION })?;
        let Reply::Welcome { client, tenant, router_id, advertise, .. } = reply else {
            return Err(unexpected(reply));
        };
        shared.router_id = router_id;
        let shared = Arc::new(shared);
        let page = Arc::new(Page::open(SharedMem::from_fd(one_fd(fds)?, PAGE_LEN)?)?);
        log::debug!("attached to router at {path} as client {client} of tenant {tenant}");
        Ok(Context {
            shared,
            client_id: client,
            tenant,
            router_id,
            advertise: advertise.map(Into::into),
            page,
            regs: Mutex::default(),
            pending: Mutex::default(),
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The id of the router this context is attached to.
    pub fn router_id(&self) -> [u8; 16] {
        self.router_id
    }

    /// Is the router still there? A look at the control connection that
    /// does not wait: the kernel ends it when the router exits, however it
    /// died. A request under way (another thread holds the connection)
    /// counts as an answer.
    pub fn router_alive(&self) -> bool {
        let sock = match self.shared.sock.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::WouldBlock) => return true,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let mut b = 0u8;
        // SAFETY: at most one byte into `b`, left in the socket (MSG_PEEK).
        let n = unsafe { libc::recv(sock.as_fd().as_raw_fd(), (&mut b as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        match n {
            0 => false,
            n if n > 0 => true,
            _ => matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN | libc::EINTR)),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Opens a listener. Its handle goes to peers out of band.
    pub fn listen(&self) -> Result<Listener> {
        match self.shared.rpc(&Request::Listen)? {
            (Reply::Listening { listener, nonce }, _) => Ok(Listener {
                handle: Handle { router_id: self.router_id, listener, nonce, addr: self.advertise },
                ctx: self.shared.clone(),
                page: self.page.clone(),
                idle_at: AtomicU64::new(u64::MAX),
            }),
            (r, _) => Err(unexpected(r)),
        }
    }

    /// Connects to the listener named by `handle`. `Ok(None)` means "not yet,
    /// call again with the same handle"; it never waits for the peer. A
    /// listener on another host is reached through both hosts' routers; the
    /// first calls then return `Ok(None)` while they set the connection up.
    /// While the routers set such a connection up, calls that come soon
    /// after the last "not yet" return `Ok(None)` without asking the router
    /// (see [`ASK_FIRST`]).
    pub fn connect(&self, handle: &Handle) -> Result<Option<Conn>> {
        let req = match handle.addr {
            Some(addr) if handle.router_id != self.router_id => Request::ConnectRemote {
                router_id: handle.router_id,
                addr: addr.into(),
                listener: handle.listener,
                nonce: handle.nonce,
            },
            _ => Request::Connect { router_id: handle.router_id, listener: handle.listener, nonce: handle.nonce },
        };
        let key = (handle.router_id, handle.listener, handle.nonce);
        let remote = matches!(req, Request::ConnectRemote { .. });
        if remote && self.pending.lock().unwrap().get(&key).is_some_and(|&(next, _)| Instant::now() < next) {
            return Ok(None);
        }
        let res = self.shared.rpc(&req);
        let mut pending = self.pending.lock().unwrap();
        match res {
            Ok((Reply::NotReady, _)) => {
                if remote {
                    let now = Instant::now();
                    if pending.len() >= PENDING_MAX && !pending.contains_key(&key) {
                        let oldest = pending.iter().min_by_key(|(_, &(next, _))| next).map(|(k, _)| *k);
                        pending.remove(&oldest.expect("the map is full"));
                    }
                    let e = pending.entry(key).or_insert((now, ASK_FIRST));
                    *e = (now + e.1, (e.1 * 2).min(ASK_MAX));
                }
                Ok(None)
            }
            res => {
                pending.remove(&key);
                drop(pending);
                match res? {
                    (Reply::Connected { conn, side, ring_size, forwarded }, fds) => {
                        open_conn(conn, side, ring_size, forwarded, fds, &self.shared, &self.page).map(Some)
                    }
                    (r, _) => Err(unexpected(r)),
                }
            }
        }
    }

    /// Registers `[ptr, ptr+len)` for use in sends and receives.
    pub fn register(&self, ptr: *const u8, len: usize) -> Result<MemKey> {
        if ptr.is_null() && len > 0 || (ptr as usize).checked_add(len).is_none() {
            return Err(Error::InvalidArgument(format!("bad memory range {ptr:?}+{len}")));
        }
        let mut r = self.regs.lock().unwrap();
        r.next = r.next.wrapping_add(1).max(1);
        let key = r.next;
        r.ranges.insert(key, (ptr as usize, len));
        Ok(MemKey(key))
    }

    pub fn deregister(&self, key: MemKey) -> Result<()> {
        match self.regs.lock().unwrap().ranges.remove(&key.0) {
            Some(_) => Ok(()),
            None => Err(Error::InvalidArgument(format!("memory key {} is not registered", key.0))),
        }
    }

    /// Checks that `[ptr, ptr+len)` lies inside the range registered as `key`.
    pub fn check_range(&self, key: MemKey, ptr: *const u8, len: usize) -> Result<()> {
        let r = self.regs.lock().unwrap();
        let &(base, rlen) = r
            .ranges
            .get(&key.0)
            .ok_or_else(|| Error::InvalidArgument(format!("memory key {} is not registered", key.0)))?;
        let p = ptr as usize;
        if p < base || p.checked_add(len).is_none_or(|end| end > base + rlen) {
            return Err(Error::InvalidArgument(format!(
                "range {p:#x}+{len} is outside registered region {}: {base:#x}+{rlen}",
                key.0
            )));
        }
        Ok(())
    }

    /// Allocates shadow memory: a sealed memfd the router also maps.
    pub fn alloc_region(&self, len: usize) -> Result<Region> {
        crate::mr::alloc_region(&self.shared, len)
    }

    /// A handle that allocates regions as this context does, and outlives
    /// it (an allocator that serves `malloc` keeps one).
    pub fn region_maker(&self) -> RegionMaker {
        RegionMaker(self.shared.clone())
    }

    /// Registers `[ptr, ptr+len)` and makes its whole pages shadow memory
    /// (see [`crate::mr`]); peers of the tenant on this host then reach them
    /// through [`crate::mr::ShadowMr::remote_key`].
    ///
    /// # Safety
    /// `[ptr, ptr+len)` is memory this process owns and that nothing else
    /// (a driver, a pinned DMA mapping) expects to stay where it is, and
    /// that no other thread writes while it is registered or deregistered
    /// (its pages are copied, then switched: such writes are lost). See
    /// [`crate::shadow`] for what moving it means.
    pub unsafe fn register_shadow(&self, ptr: *const u8, len: usize) -> Result<crate::mr::ShadowMr> {
        crate::mr::register(&self.shared, ptr, len, true)
    }

    /// Like [`Context::register_shadow`], but never moves pages: the range
    /// is shared only if it lies in shadow memory already (a [`Region`], or
    /// a range registered with `register_shadow`), else it stays private
    /// ([`ShadowMr::why_not`] says so). For registrations made on behalf
    /// of code that may still use the memory's neighbourhood, or free and
    /// reuse it, meanwhile (a registration cache that merges ranges, an
    /// allocator): moving pages loses writes that other threads make to
    /// them during the switch.
    ///
    /// # Safety
    /// As for [`Context::register_shadow`].
    pub unsafe fn register_in_shadow(&self, ptr: *const u8, len: usize) -> Result<crate::mr::ShadowMr> {
        crate::mr::register(&self.shared, ptr, len, false)
    }

    /// Maps the region a peer's remote key names (same tenant, this host);
    /// mappings are kept (at most [`crate::mr::MAX_MAPS`]) while the region
    /// is live.
    pub fn map_remote(&self, key: &crate::mr::RemoteKey) -> Result<Arc<crate::mr::RemoteMap>> {
        crate::mr::map_remote(&self.shared, key)
    }

    /// The router's counters for this tenant.
    pub fn stats(&self) -> Result<Stats> {
        match self.shared.rpc(&Request::Stats)? {
            (Reply::Stats(s), _) => Ok(s),
            (r, _) => Err(unexpected(r)),
        }
    }
}

fn open_conn(conn: u64, side: u8, ring_size: u64, forwarded: bool, fds: Vec<OwnedFd>, ctx: &Arc<Shared>, page: &Arc<Page>) -> Result<Conn> {
    let ring_size = ring_size as usize;
    let mem = SharedMem::from_fd(one_fd(fds)?, crate::ring::file_len(ring_size))?;
    let mut c = Conn::new(conn, side as usize, mem, ring_size, Some(ctx.clone()), Some(page.clone()))?;
    c.router_is_peer = forwarded;
    if !forwarded {
        c.share = Some(ctx.rings.join(ring_size));
    }
    Ok(c)
}

/// A listener; dropping it closes it (connections already made stay).
pub struct Listener {
    handle: Handle,
    ctx: Arc<Shared>,
    page: Arc<Page>,
    /// The page's accept counter when the router last said "nothing
    /// pending"; while it is unchanged, nothing new was queued for us.
    idle_at: AtomicU64,
}

impl Listener {
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// Takes one pending connection: `Ok(None)` if none yet. Never waits,
    /// and costs no router round trip while nothing new was queued.
    pub fn accept(&self) -> Result<Option<Conn>> {
        let seq = self.page.accept_seq();
        if seq == self.idle_at.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match self.ctx.rpc(&Request::Accept { listener: self.handle.listener })? {
            (Reply::Connected { conn, side, ring_size, forwarded }, fds) => {
                open_conn(conn, side, ring_size, forwarded, fds, &self.ctx, &self.page).map(Some)
            }
            (Reply::NotReady, _) => {
                self.idle_at.store(seq, Ordering::Relaxed);
                Ok(None)
            }
            (r, _) => Err(unexpected(r)),
        }
    }

    /// Might [`Listener::accept`] find a connection now (the router queued
    /// one for this process since it last said none)? No round trip.
    pub fn may_have_pending(&self) -> bool {
        self.page.accept_seq() != self.idle_at.load(Ordering::Relaxed)
    }

    /// The word the router wakes when it queues a connection for this
    /// process (any of its listeners), for a [`crate::wake::Waiter`]. Take
    /// it, then check [`Listener::may_have_pending`], then sleep.
    pub fn wake_word(&self) -> crate::wake::WakeWord {
        let w = self.page.accept_wake_word();
        let seen = w.load(Ordering::SeqCst);
        // SAFETY: the word lies in the page the Arc keeps mapped.
        unsafe { crate::wake::WakeWord::new(self.page.clone(), w, seen) }
    }

    /// Polls [`Listener::accept`] until a connection arrives or `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Conn> {
        let start = std::time::Instant::now();
        let mut nap = Duration::from_micros(50);
        loop {
            if let Some(c) = self.accept()? {
                return Ok(c);
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(timeout));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.ctx.rpc(&Request::CloseListener { listener: self.handle.listener });
    }
}

/// Allocates [`Region`]s through one router attachment
/// ([`Context::region_maker`]).
#[derive(Clone)]
pub struct RegionMaker(Arc<Shared>);

impl RegionMaker {
    /// As [`Context::alloc_region`].
    pub fn alloc(&self, len: usize) -> Result<Region> {
        crate::mr::alloc_region(&self.0, len)
    }
}

/// Shadow memory shared with the router. Freed on drop (once nothing
/// registered inside it, or sent from it, still holds it).
pub struct Region {
    // Dropped first: frees the region (when the last holder lets go) before
    // the mapping goes.
    seg: Arc<crate::mr::Segment>,
    mem: SharedMem,
}

impl Drop for Region {
    fn drop(&mut self) {
        // Before the mapping goes (then `seg`, then `mem`).
        self.seg.unlist();
    }
}

impl Region {
    pub(crate) fn new(seg: Arc<crate::mr::Segment>, mem: SharedMem) -> Region {
        Region { seg, mem }
    }

    pub fn id(&self) -> u64 {
        self.seg.region()
    }
    /// Where its data starts (after the header page).
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: the file is the header plus the data.
        unsafe { self.mem.as_ptr().add(crate::shm::region_header()) }
    }
    pub fn len(&self) -> usize {
        self.mem.len() - crate::shm::region_header()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What a peer of the tenant on this host needs to map it.
    pub fn remote_key(&self) -> crate::mr::RemoteKey {
        self.seg.remote_key(true)
    }
    /// The whole mapping (header page, then data) and its file: for a
    /// process that must replace it (a forked child, see the UCX
    /// transport's heap).
    pub fn mapping(&self) -> (*mut u8, usize, BorrowedFd<'_>) {
        (self.mem.as_ptr(), self.mem.len(), self.mem.fd())
    }
}
