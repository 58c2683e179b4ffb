//! The port (one per process: its router attachment and listener, what
//! the GID names, and the queue pair numbers) and the device context (one
//! per `ibv_open_device`): registrations, completion queues and channels,
//! and the thread that serves the queue pairs while the application does
//! not call in (one-sided operations need no help from the target
//! application, as on a NIC).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use ffcore::{Handle, Listener, ShadowMr};

use crate::qp::Engine;
use crate::sys::*;
use crate::wire::Gid;

/// A registration: `[addr, addr+len)` of this process, for `pd`.
pub struct Mr {
    pub addr: u64,
    pub len: u64,
    pub access: u32,
    pub pd: usize,
    pub key: u32,
    /// Its whole pages made shadow memory (sends from it go by reference).
    pub shadow: Option<ShadowMr>,
}

impl Mr {
    /// The registration covers `len` bytes from `addr`.
    fn holds(&self, addr: u64, len: u64) -> bool {
        range_holds(self.addr, self.len, addr, len)
    }
}

/// Does `[base, base+size)` hold `[addr, addr+len)`? Neither sum may
/// overflow (a peer names some of these values: see `qp::Direct`).
pub fn range_holds(base: u64, size: u64, addr: u64, len: u64) -> bool {
    let end = base.checked_add(size);
    addr >= base && addr.checked_add(len).zip(end).is_some_and(|(e, end)| e <= end)
}

/// A completion channel: an eventfd (one count per event) and the CQs
/// whose events are due, in order.
pub struct Channel {
    pub efd: OwnedFd,
    pub events: Mutex<VecDeque<usize>>,
    /// Bumped by every event, for a thread that waits for one asleep on
    /// the connections' words ([`crate::qp::wait_event`]) beside this.
    posted: Arc<AtomicU32>,
    /// Such a thread sleeps on `posted`: wake it.
    sleeping: AtomicBool,
}

impl Channel {
    pub fn new() -> std::io::Result<Channel> {
        // SAFETY: plain syscall; the descriptor is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Channel { efd, events: Mutex::new(VecDeque::new()), posted: Arc::new(AtomicU32::new(0)), sleeping: AtomicBool::new(false) })
    }

    fn post(&self, cq: usize) {
        self.events.lock().unwrap().push_back(cq);
        let one = 1u64;
        // SAFETY: writes 8 bytes from our stack to our eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        self.posted.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            ffcore::futex::wake_all(&self.posted);
        }
    }

    /// Is an event due?
    pub fn ready(&self) -> bool {
        !self.events.lock().unwrap().is_empty()
    }

    /// The event count, read before checking [`Channel::ready`].
    pub fn posted(&self) -> u32 {
        self.posted.load(Ordering::SeqCst)
    }

    /// The word to sleep on for the next event (`seen`: from
    /// [`Channel::posted`]); announces the sleep until
    /// [`Channel::woke`].
    pub fn word(&self, seen: u32) -> ffcore::wake::WakeWord {
        self.sleeping.store(true, Ordering::SeqCst);
        // SAFETY: the word lives in the Arc the WakeWord keeps.
        unsafe { ffcore::wake::WakeWord::new(self.posted.clone(), Arc::as_ptr(&self.posted), seen) }
    }

    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// A completion queue's entries (the C `ibv_cq` is in the abi module).
pub struct Cq {
    pub q: Mutex<VecDeque<ibv_wc>>,
    armed: AtomicBool,
    /// The device's count of armed queues ([`Device::awaits_event`]).
    armed_count: Arc<AtomicU32>,
    pub chan: Option<Arc<Channel>>,
    /// The `ibv_cq` the application holds, for channel events.
    pub ibv: AtomicU64,
    pub events_got: AtomicU32,
    pub events_acked: AtomicU32,
    /// `ibv_poll_cq` calls in a row that found nothing after a progress
    /// pass (see [`Cq::idle_poll`]).
    idle_polls: AtomicU32,
}

/// An application that polls an empty completion queue this many times
/// in a row gives up its time slice once (`sched_yield`).
const YIELD_EVERY: u32 = 64;

impl Cq {
    /// A queue of `dev`'s, with its completion channel if any.
    pub fn new(dev: &Device, chan: Option<Arc<Channel>>) -> Cq {
        Cq {
            q: Mutex::new(VecDeque::new()),
            armed: AtomicBool::new(false),
            armed_count: dev.armed_cqs.clone(),
            chan,
            ibv: AtomicU64::new(0),
            events_got: AtomicU32::new(0),
            events_acked: AtomicU32::new(0),
            idle_polls: AtomicU32::new(0),
        }
    }

    pub fn push(&self, wc: ibv_wc) {
        self.q.lock().unwrap().push_back(wc);
        if self.armed.swap(false, Ordering::AcqRel) {
            self.armed_count.fetch_sub(1, Ordering::AcqRel);
            if let Some(ch) = &self.chan {
                ch.post(self.ibv.load(Ordering::Relaxed) as usize);
            }
        }
    }

    /// `ibv_req_notify_cq`: the next completion posts an event on the
    /// channel.
    pub fn arm(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.armed_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn pop(&self, out: &mut [ibv_wc]) -> usize {
        let mut q = self.q.lock().unwrap();
        let n = out.len().min(q.len());
        for (i, wc) in q.drain(..n).enumerate() {
            out[i] = wc;
        }
        if n > 0 {
            self.idle_polls.store(0, Ordering::Relaxed);
        }
        n
    }

    /// An `ibv_poll_cq` that found nothing even after a progress pass.
    /// Applications spin on `ibv_poll_cq` (perftest, UCX, NCCL): on a host
    /// with few cores the peer they wait for may need this very core, so
    /// every [`YIELD_EVERY`]th empty poll in a row yields it (a system call
    /// that returns at once when nothing else wants the core).
    pub fn idle_poll(&self) {
        let n = self.idle_polls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        if *self.armed.get_mut() {
            self.armed_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why a work request's memory was refused: the completion status.
pub type Status = u32;

/// What a NIC's port is to every context opened on it: one per process
/// here. Its GID names its listener, which every context of the process
/// shares, as they share the queue pair numbers: a GID that one context
/// reports reaches the queue pairs of another, as on a NIC (UCX connects
/// the queue pairs of its own context with the GIDs its rdma_cm context
/// reports). Each context's engine accepts what comes and hands a
/// connection (or datagram) for another context's queue pair to it.
pub struct Port {
    pub ff: ffcore::Context,
    pub listener: Listener,
    /// The listener's handle: what peers connect to (their view is the GID).
    pub own: Handle,
    pub gid: [u8; 16],
    /// The context owning each queue pair number in use.
    owners: Mutex<FxHashMap<u32, Weak<Device>>>,
    next_qpn: AtomicU32,
    /// The process it was made in: a child made by `fork` gets a port of
    /// its own (the parent's attachment is the parent's).
    pid: u32,
    /// The router went away ([`Port::router_gone`]): the port is down for
    /// good, and contexts opened from then on get a port of their own.
    down: AtomicBool,
}

impl Port {
    /// The process's port: the one its open contexts share, or a new one.
    pub fn get() -> ffcore::Result<Arc<Port>> {
        static PORT: Mutex<Weak<Port>> = Mutex::new(Weak::new());
        let mut p = PORT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(port) = p.upgrade() {
            if port.pid != std::process::id() {
                // The parent's, copied by fork: never dropped here (that
                // would detach the parent's client from the router).
                std::mem::forget(port);
            } else if !port.is_down() {
                return Ok(port);
            }
            // Its router went away: the contexts still open keep it, a new
            // one attaches anew (to the router restarted, if it is).
        }
        let ff = ffcore::Context::new()?;
        let listener = ff.listen()?;
        let own = listener.handle();
        let ip = match own.addr {
            Some(std::net::SocketAddr::V4(a)) => a.ip().octets(),
            Some(std::net::SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
                Some(v4) => v4.octets(),
                None => return Err(ffcore::Error::InvalidArgument("ff0 needs an IPv4 router address (--advertise-addr)".into())),
            },
            None => [0; 4],
        };
        let listener_id = u32::try_from(own.listener).map_err(|_| ffcore::Error::InvalidArgument("listener id over 32 bits".into()))?;
        let gid = Gid { ip, listener: listener_id, nonce: own.nonce }.to_bytes();
        let port = Arc::new(Port {
            ff,
            listener,
            own,
            gid,
            owners: Mutex::new(FxHashMap::default()),
            next_qpn: AtomicU32::new(0x100 + (rand::random::<u32>() & 0xfff)),
            pid: std::process::id(),
            down: AtomicBool::new(false),
        });
        *p = Arc::downgrade(&port);
        Ok(port)
    }

    /// A queue pair number for `dev`, unused in the process.
    pub fn new_qpn(&self, dev: &Weak<Device>) -> u32 {
        let mut owners = self.owners.lock().unwrap();
        loop {
            let n = self.next_qpn.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0xff_ffff;
            if n > 0 && owners.get(&n).is_none_or(|w| w.strong_count() == 0) {
                owners.insert(n, dev.clone());
                return n;
            }
        }
    }

    /// Queue pair `qpn` of `dev` is gone (if the number went to another
    /// context meanwhile, `dev` being dropped, it stays that one's).
    pub fn release(&self, qpn: u32, dev: &Weak<Device>) {
        let mut owners = self.owners.lock().unwrap();
        if owners.get(&qpn).is_some_and(|w| w.ptr_eq(dev)) {
            owners.remove(&qpn);
        }
    }

    /// Has the router gone away (its control connection ended)? Looked at
    /// by each context's service thread every `qp::ALIVE_EVERY`; once gone,
    /// the port stays down (its listener and the router's records of this
    /// process went with the router).
    pub fn router_gone(&self) -> bool {
        if self.is_down() {
            return true;
        }
        if self.ff.router_alive() {
            return false;
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            log::warn!("ffverbs: the router went away: ff0's port is down (every open context gets IBV_EVENT_PORT_ERR and IBV_EVENT_DEVICE_FATAL; a context opened from now on attaches anew)");
        }
        true
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The context that owns queue pair `qpn`, if it is open.
    pub fn owner(&self, qpn: u32) -> Option<Arc<Device>> {
        self.owners.lock().unwrap().get(&qpn).and_then(Weak::upgrade)
    }
}

/// One opened device.
pub struct Device {
    pub port: Arc<Port>,
    /// Connections and datagrams the engine of another context of the
    /// process accepted for queue pairs of this one.
    pub inbox: Mutex<Inbox>,
    pub engine: Mutex<Engine>,
    /// Our own keys (we choose them: a fast hash is safe here).
    pub mrs: RwLock<FxHashMap<u32, Mr>>,
    next_key: AtomicU32,
    /// Verb calls of the application that drive progress (a count, not a
    /// clock: one relaxed add per call).
    app_calls: AtomicU64,
    pub stop: AtomicBool,
    /// Wakes the service thread (close, a new connection to sleep on, an
    /// armed completion queue): bumped, then futex-woken; the thread
    /// sleeps on it beside its connections' words.
    kick: Arc<AtomicU32>,
    /// The context's `async_fd`: one count per event in `async_events`.
    pub async_efd: OwnedFd,
    /// Asynchronous events not yet read: (`ibv_event_type`, the element).
    pub async_events: Mutex<VecDeque<(u32, u64)>>,
    /// Its port's loss was announced ([`Device::watch_router`]).
    told_down: AtomicBool,
    /// Shared receive queues of this context (capped: `srq::MAX_SRQ`).
    pub srqs: AtomicUsize,
    /// Completion queues armed for an event (`ibv_req_notify_cq`) that
    /// has not fired yet.
    armed_cqs: Arc<AtomicU32>,
    /// Held by whoever sleeps on the connections' words: the service
    /// thread, or an application thread blocked in `ibv_get_cq_event`
    /// ([`crate::qp::wait_event`]). A connection's "I sleep" flag has one
    /// owner: a second sleeper that woke would withdraw the other's.
    sleeper: Mutex<()>,
    /// Application threads in `ibv_get_cq_event` that hold `sleeper` or
    /// are about to take it: the service thread leaves the words to them.
    pub app_waiters: AtomicU32,
    /// The thread holding `sleeper` is an application's: another one
    /// blocks on its channel's descriptor instead of waiting for it.
    pub app_sleeps: AtomicBool,
    /// The service thread naps while `app_waiters` is not 0: the last one
    /// to leave kicks it.
    pub parked: AtomicBool,
    /// Until when (µs after `epoch`) the service thread leaves the words
    /// to the application, which waited for an event itself and is likely
    /// to come back for the next (so the words need not change hands).
    direct_until: AtomicU64,
    epoch: std::time::Instant,
}

/// Asynchronous events kept unread before new ones are dropped.
const MAX_ASYNC_EVENTS: usize = 4096;


/// What another context handed over (see [`Port`]), capped as a NIC's
/// queues are: beyond [`Inbox::MAX`] datagrams, new ones are dropped.
#[derive(Default)]
pub struct Inbox {
    pub conns: Vec<crate::qp::Pending>,
    pub datagrams: Vec<(crate::ud::UdHdr, Vec<u8>)>,
}

impl Inbox {
    pub const MAX: usize = 4096;
}

impl Device {
    pub fn open() -> ffcore::Result<Arc<Device>> {
        let port = Port::get()?;
        // SAFETY: plain syscall; the descriptor is ours.
        let async_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
        if async_fd < 0 {
            return Err(ffcore::Error::Io(std::io::Error::last_os_error()));
        }
        let dev = Arc::new_cyclic(|me| Device {
            port: port.clone(),
            inbox: Mutex::new(Inbox::default()),
            engine: Mutex::new(Engine::new(port.clone(), me.clone())),
            mrs: RwLock::new(FxHashMap::default()),
            next_key: AtomicU32::new(rand::random::<u32>() & 0xff_ffff),
            app_calls: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            kick: Arc::new(AtomicU32::new(0)),
            // SAFETY: a fresh descriptor nobody else owns.
            async_efd: unsafe { OwnedFd::from_raw_fd(async_fd) },
            async_events: Mutex::new(VecDeque::new()),
            told_down: AtomicBool::new(false),
            srqs: AtomicUsize::new(0),
            armed_cqs: Arc::new(AtomicU32::new(0)),
            sleeper: Mutex::new(()),
            app_waiters: AtomicU32::new(0),
            app_sleeps: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            direct_until: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        });
        let d = dev.clone();
        std::thread::Builder::new().name("ffverbs".into()).spawn(move || crate::qp::service(d)).map_err(ffcore::Error::Io)?;
        Ok(dev)
    }

    pub fn kick(&self) {
        self.kick.fetch_add(1, Ordering::SeqCst);
        ffcore::futex::wake_all(&self.kick);
    }

    /// The kick count, read before the service thread looks for work: a
    /// kick after that makes its next nap or sleep return at once.
    pub fn kicks(&self) -> u32 {
        self.kick.load(Ordering::SeqCst)
    }

    /// The kick word to sleep on beside the connections' (`seen`: from
    /// [`Device::kicks`]).
    pub fn kick_word(&self, seen: u32) -> ffcore::wake::WakeWord {
        // SAFETY: the word lives in the Arc the WakeWord keeps.
        unsafe { ffcore::wake::WakeWord::new(self.kick.clone(), Arc::as_ptr(&self.kick), seen) }
    }

    /// Queues an asynchronous event for `ibv_get_async_event` and makes
    /// the context's `async_fd` readable.
    pub fn async_event(&self, event_type: u32, element: u64) {
        let mut q = self.async_events.lock().unwrap();
        if q.len() >= MAX_ASYNC_EVENTS {
            log::warn!("ffverbs: {MAX_ASYNC_EVENTS} asynchronous events unread: event {event_type} dropped");
            return;
        }
        q.push_back((event_type, element));
        let one = 1u64;
        // SAFETY: writes 8 bytes from our stack to our eventfd.
        unsafe { libc::write(self.async_efd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Once the router went away, tells the application as a NIC's driver
    /// tells of a device that failed: `IBV_EVENT_PORT_ERR` (port 1), then
    /// `IBV_EVENT_DEVICE_FATAL`, once. Queue pairs through the router fail
    /// by themselves (their peer's liveness); those with a peer on this
    /// host go on, but nothing new can be set up on the port.
    pub fn watch_router(&self) {
        if self.port.router_gone() && !self.told_down.swap(true, Ordering::AcqRel) {
            self.async_event(IBV_EVENT_PORT_ERR, 1);
            self.async_event(IBV_EVENT_DEVICE_FATAL, 0);
        }
    }

    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
    }

    /// The application calls in: it drives progress itself for a while.
    pub fn app_active(&self) {
        self.app_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Does the application wait for a completion event (a queue armed
    /// with `ibv_req_notify_cq` that has not fired)? Then it will soon stop
    /// calling in, if it has not already (blocked in `ibv_get_cq_event`, or
    /// in `poll` on the channel's descriptor), and the service thread must
    /// not nap: the event would come a nap late.
    pub fn awaits_event(&self) -> bool {
        self.armed_cqs.load(Ordering::Acquire) > 0
    }

    /// Takes [`Device::sleeper`] if nobody holds it (a panic that left it
    /// poisoned guarded nothing: the lock holds no data).
    pub fn try_sleeper(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        match self.sleeper.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// An application thread waited for an event itself just now
    /// ([`crate::qp::wait_event`]): leave the words to it for `grace`.
    pub fn waited_directly(&self, grace: Duration) {
        let until = (self.epoch.elapsed() + grace).as_micros() as u64;
        self.direct_until.store(until, Ordering::Relaxed);
    }

    /// Did an application thread wait for an event itself lately?
    pub fn waits_directly(&self) -> bool {
        (self.epoch.elapsed().as_micros() as u64) < self.direct_until.load(Ordering::Relaxed)
    }

    /// Sleeps for `d` or until [`Device::kick`]ed since the kick count was
    /// `seen`, whichever comes first.
    pub fn nap(&self, d: Duration, seen: u32) {
        ffcore::futex::wait(&self.kick, seen, d);
    }

    /// How many times the application called in so far: the service
    /// thread naps instead of sleeping on the connections while this moves
    /// (no futex wake-ups for the peers).
    pub fn app_calls(&self) -> u64 {
        self.app_calls.load(Ordering::Relaxed)
    }

    /// Moves everything that can move, unless another thread is at it.
    pub fn progress(&self) -> bool {
        match self.engine.try_lock() {
            Ok(mut e) => e.progress(self),
            Err(_) => false,
        }
    }

    /// A new key: 24 bits of counter, 8 random bits (as NICs do).
    pub fn new_key(&self) -> u32 {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        n << 8 | rand::random::<u8>() as u32
    }

    /// `f` on the registration `key` under the read lock (no reference
    /// count traffic on the data path). No reference to it is kept: a
    /// registration's last one goes in `ibv_dereg_mr`, whose caller may
    /// write the memory as soon as it returns, and dropping it moves the
    /// pages back (see `ffcore::shadow`), which must not happen meanwhile
    /// on another thread.
    pub fn with_mr<T>(&self, key: u32, f: impl FnOnce(&Mr) -> T) -> Option<T> {
        self.mrs.read().unwrap().get(&key).map(f)
    }

    /// Checks a local scatter/gather element: the key names a registration
    /// of `pd` that holds the range (and allows local writes if `write`).
    pub fn check_local(&self, pd: usize, lkey: u32, addr: u64, len: u64, write: bool) -> Result<(), Status> {
        if len == 0 {
            return Ok(());
        }
        let ok = self.with_mr(lkey, |m| {
            m.pd == pd && m.holds(addr, len) && (!write || m.access & IBV_ACCESS_LOCAL_WRITE != 0)
        });
        if ok != Some(true) {
            return Err(IBV_WC_LOC_PROT_ERR);
        }
        Ok(())
    }

    /// Checks a peer's access to `[addr, addr+len)` under `rkey` for a
    /// queue pair of `pd` that allows `need` (a remote access flag).
    pub fn check_remote(&self, pd: usize, qp_access: u32, rkey: u32, addr: u64, len: u64, need: u32) -> Result<*mut u8, Status> {
        if qp_access & need == 0 {
            return Err(IBV_WC_REM_ACCESS_ERR);
        }
        if len == 0 {
            return Ok(addr as *mut u8);
        }
        let ok = self.with_mr(rkey, |m| {
            m.pd == pd && m.holds(addr, len) && m.access & need != 0
        });
        if ok != Some(true) {
            return Err(IBV_WC_REM_ACCESS_ERR);
        }
        Ok(addr as *mut u8)
    }
}
