//! One forwarded connection as a router plays it ([`Fwd`]): the connection
//! file, its set-up state, the inbound half (the ring towards the client,
//! credit charged, posted receives and the message being placed) that a
//! receiver thread writes, and the outbound half (what the client wrote,
//! framed for the link, by copy or straight from shadow memory) that its
//! pump sends.

use super::*;

#[derive(Clone, Debug)]
pub(super) enum Setup {
    Waiting,
    Accepted,
    Refused(ErrorCode, String),
}

/// Producer state of the ring towards our client (the receiver thread
/// writes; the pump reads `consumed` to return credit).
pub(super) struct Inbound {
    pub(super) tx: Tx,
    /// Credit charged for every frame received.
    pub(super) charged: u64,
    /// Credit the frames did not use (returned with the next CREDIT).
    pub(super) excess: u64,
    /// Messages started towards our client (the next one's number).
    pub(super) msgs: u64,
    /// The message being written straight into a posted receive.
    pub(super) placing: Option<Placing>,
    /// Bytes of the message being placed whose credit went back when it
    /// started (see [`Inbound::start`]), not received yet.
    pub(super) ahead: u64,
}

/// Most receives a client may have posted on one connection (as many as
/// it may have requests outstanding).
pub(super) const MAX_POSTS: usize = ffcore::conn::MAX_INFLIGHT;

/// Receives our client posted in its shadow memory, by message number (see
/// [`ring::REC_POST`]). Apart from [`Inbound`], which the receiver thread
/// holds for a whole frame (a megabyte being written): the pump takes a
/// post meanwhile, so the request behind it in the ring (a GET whose data
/// is to come into it) does not wait for the frame before it. Lock order:
/// `inb`, then `posts`.
pub(super) struct Posts {
    pub(super) queue: VecDeque<Post>,
    /// The client's withdrawals carried out: posts of an older generation
    /// are dropped (published in our side's `unposted`).
    unposted: u64,
    /// Messages started (`Inbound::msgs` as of the last start): posts for
    /// them came too late and are dropped. (Kept, they would pile up while
    /// a client takes from its ring messages that all came before it
    /// posted, towards `MAX_POSTS`.)
    started: u64,
    /// The connection is being dropped: no more posts.
    closed: bool,
}

/// A receive in a client's shadow region: `cap` bytes at `off` of `mem`'s
/// data, for message `idx` if its tag matches.
pub(super) struct Post {
    pub(super) idx: u64,
    pub(super) gen: u64,
    tag: u32,
    pub(super) mem: Arc<SharedMem>,
    pub(super) off: usize,
    cap: u64,
}

/// A message going into `post`: `got` of its `total` bytes so far.
pub(super) struct Placing {
    pub(super) post: Post,
    pub(super) total: u64,
    pub(super) got: u64,
    /// Our client closed meanwhile: the rest of the message is read and
    /// dropped (it was credited as placed, so it must not go to the ring).
    pub(super) drop: bool,
}

impl Inbound {
    /// Credit granted to the peer so far: the ring, what frames were
    /// charged beyond their use, and what our client has consumed (read
    /// from shared memory, so it may be corrupt).
    pub(super) fn granted(&mut self, ring: u64) -> ffcore::Result<u64> {
        Ok(ring + self.excess + self.tx.consumed()?)
    }

    /// A message of `total` bytes with `tag` starts: into the receive
    /// posted for it, if there is one that takes it. Then none of its bytes
    /// will use the ring, so their credit goes back now, not frame by
    /// frame as they arrive (`ahead`): the sender may send the next message
    /// while this one is still coming, instead of stopping at a ring's
    /// worth in flight.
    pub(super) fn start(&mut self, posts: &Mutex<Posts>, tag: u32, total: u64, place: bool) {
        let idx = self.msgs;
        self.msgs += 1;
        let mut posts = posts.lock().unwrap();
        posts.started = self.msgs;
        // Posts for messages already started came too late (or lied).
        while posts.queue.front().is_some_and(|p| p.idx < idx) {
            posts.queue.pop_front();
        }
        let fits = |p: &Post| p.idx == idx && (p.tag == TAG_ANY || p.tag == tag) && total > 0 && total <= p.cap;
        if place && posts.queue.front().is_some_and(fits) {
            let post = posts.queue.pop_front().unwrap();
            self.placing = Some(Placing { post, total, got: 0, drop: false });
            self.ahead = total;
            self.excess += total;
        }
    }

    /// Carries out the client's withdrawals of its posts (between messages
    /// only: a message being placed finishes where it started).
    pub(super) fn unpost(&mut self, posts: &Mutex<Posts>, client: ring::Side<'_>, router: ring::Side<'_>) {
        // Untrusted, but only ever grows here.
        let want = client.unpost_req.load(Ordering::Acquire);
        if self.placing.as_ref().is_some_and(|p| !p.drop) {
            return;
        }
        let mut posts = posts.lock().unwrap();
        if want <= posts.unposted {
            return;
        }
        posts.unposted = want;
        posts.queue.retain(|p| p.gen >= want);
        router.unposted.store(want, Ordering::Release);
        client.notify();
    }
}

/// A `Layout` that may be shared between threads: it only hands out
/// atomics and raw pointers into the mapping, which `Fwd` keeps alive.
pub(super) struct SharedLayout(pub(super) Layout);
// SAFETY: see above; all accesses through it are atomic or raw copies.
unsafe impl Sync for SharedLayout {}

/// One forwarded connection: the router plays `side` of its file.
pub struct Fwd {
    pub local: u64,
    /// The local client at our end (for the accepting end: the listener's
    /// owner, who accepts it).
    pub(super) client: u64,
    pub(super) side: usize,
    pub(super) ring: u64,
    pub(super) stream: AtomicUsize,
    pub(super) peer_conn: AtomicU64,
    peer_ring: AtomicU64,
    pub(super) setup: Mutex<Setup>,
    pub(super) inb: Mutex<Inbound>,
    pub(super) posts: Mutex<Posts>,
    pub(super) out: Mutex<Out>,
    pub(super) reported: AtomicU64,
    /// Credit the peer granted us so far.
    pub(super) limit: AtomicU64,
    pub(super) peer_closed: AtomicBool,
    pub(super) local_fault: AtomicBool,
    /// A receiver thread serves this connection ([`Cover`]): the pump
    /// sleeps without asking the client for wake-ups.
    pub(super) covered: AtomicBool,
    /// Its conversation's pace when its last cover ended.
    pub(super) pace: Mutex<Pace>,
    /// The link its rings are registered with, where that pins their pages
    /// (RDMA): the trimmer has it let go of an idle ring first.
    pub(super) pins: std::sync::OnceLock<Weak<dyn Link>>,
    /// The pump worker serving it (diagnostics).
    pub(super) worker: AtomicUsize,
    /// The link carrying it and its router, once it is up (for receiver
    /// threads of other links that cover it).
    pub(super) route: std::sync::OnceLock<(Weak<Peer>, Arc<dyn Link>)>,
    pub(super) lay: SharedLayout,
    /// The router's liveness lock on its side: if the router dies, its
    /// local clients learn it from the kernel ([`ffcore::liveness`]).
    _live: Option<ffcore::liveness::Liveness>,
    pub(super) mem: Arc<SharedMem>,
    pub(super) regions: Regions,
}

/// Idle rings go back to the kernel ([`crate::trim`]): the client's with
/// the shared handshake, ours while `inb` (which holds our private `Tx`) is
/// ours.
impl crate::trim::Rings for Fwd {
    fn mem(&self) -> &SharedMem {
        &self.mem
    }

    fn own_ring(&self) -> Option<usize> {
        Some(self.side)
    }

    fn without_own_writer(&self, f: &mut dyn FnMut()) -> bool {
        match self.inb.try_lock() {
            Ok(_g) => {
                f();
                true
            }
            Err(_) => false,
        }
    }

    fn unpin(&self, dir: usize) -> bool {
        let Some(link) = self.pins.get() else { return true };
        let Some(link) = link.upgrade() else { return false };
        if dir == self.side {
            // Our own ring: the trimmer holds `inb`, so no READ into it is
            // under way.
            return link.unpin(&self.mem, self.lay.0.ring_span(dir));
        }
        // The client's ring: the peer router may READ what we framed from
        // it until it acked. The trimmer's emptiness comes from the control
        // page, which the client writes too; it must not make us take the
        // NIC's registration from under a READ (the peer's link, and every
        // tenant's connections on it, would fail): our own account decides.
        let Ok(out) = self.out.try_lock() else { return false };
        out.pending.is_empty() && out.unread.is_empty() && link.unpin(&self.mem, self.lay.0.ring_span(dir))
    }
}

/// Where a forwarded connection's pump finds the shadow regions its client
/// references (checked against the connection's tenant).
pub struct Regions {
    pub(super) state: Weak<Mutex<State>>,
    pub(super) tenant: Arc<str>,
}

impl Regions {
    fn get(&self, region: u64, key: u64) -> Option<Arc<SharedMem>> {
        self.state.upgrade()?.lock().unwrap().region_for(&self.tenant, region, key)
    }

    /// A region named with its read-write key.
    fn writable(&self, region: u64, key: u64) -> Option<Arc<SharedMem>> {
        self.state.upgrade()?.lock().unwrap().region_for_write(&self.tenant, region, key)
    }
}

impl Fwd {
    /// The smaller of its two rings (ours towards the client, and the
    /// peer router's, once known): what bounds one turn of its pump
    /// (see `Quantum::Turn`).
    pub(crate) fn turn_ring(&self) -> usize {
        match self.peer_ring.load(Ordering::Relaxed) {
            0 => self.ring as usize,
            p => self.ring.min(p) as usize,
        }
    }

    pub(super) fn new(local: u64, side: usize, mem: Arc<SharedMem>, client: u64, regions: Regions) -> Result<Arc<Fwd>, String> {
        let ring = (mem.len() - ring::CTRL_LEN) / 2;
        let lay = Layout::new(&mem, ring).map_err(|e| e.to_string())?;
        // The client may send shadow-memory references (we send their
        // bytes from the region straight onto the wire) and post receives
        // in its shadow memory (we write messages straight into them).
        lay.side(side).caps.store(ring::CAP_SHADOW | ring::CAP_PLACE, Ordering::Release);
        // Private: the trimmer keeps it out with `inb`'s lock (crate::trim).
        let tx = lay.tx_private(side);
        let live = match ffcore::liveness::Liveness::hold(mem.fd(), side) {
            Ok(l) => {
                lay.side(side).attached.store(1, Ordering::Release);
                Some(l)
            }
            Err(e) => {
                log::debug!("connection {local}: no liveness lock ({e})");
                None
            }
        };
        let f = Arc::new(Fwd {
            local,
            client,
            side,
            ring: ring as u64,
            stream: AtomicUsize::new(0),
            peer_conn: AtomicU64::new(0),
            peer_ring: AtomicU64::new(0),
            setup: Mutex::new(Setup::Waiting),
            inb: Mutex::new(Inbound { tx, charged: 0, excess: 0, msgs: 0, placing: None, ahead: 0 }),
            posts: Mutex::new(Posts { queue: VecDeque::new(), unposted: 0, started: 0, closed: false }),
            out: Mutex::new(Out::new(lay.rx(side))),
            reported: AtomicU64::new(ring as u64),
            limit: AtomicU64::new(0),
            peer_closed: AtomicBool::new(false),
            local_fault: AtomicBool::new(false),
            covered: AtomicBool::new(false),
            pace: Mutex::new(Pace { last: None, window: reply_window() }),
            pins: std::sync::OnceLock::new(),
            worker: AtomicUsize::new(usize::MAX),
            route: std::sync::OnceLock::new(),
            lay: SharedLayout(lay),
            _live: live,
            mem,
            regions,
        });
        Ok(f)
    }

    /// Registers the connection's rings with the link (RDMA: each with the
    /// NIC), keeping the link where the NIC keeps the pages it was given,
    /// so that the trimmer has it let go of an idle ring before punching;
    /// only then does the trimmer watch the rings (a ring punched while
    /// the NIC pins its pages would leave the NIC pages the file no longer
    /// has: the connector's side may wait seconds for its link before
    /// this).
    pub(super) fn register(self: &Arc<Self>, link: &Arc<dyn Link>) -> std::io::Result<()> {
        if link.pins_memory() {
            let _ = self.pins.set(Arc::downgrade(link));
        }
        link.register(&self.mem, &[self.lay.0.ring_span(0), self.lay.0.ring_span(1)])?;
        let watched: Weak<dyn crate::trim::Rings> = Arc::downgrade(self) as Weak<Fwd>;
        crate::trim::watch(watched);
        Ok(())
    }

    pub(super) fn router_side(&self) -> ring::Side<'_> {
        self.lay.0.side(self.side)
    }

    pub(super) fn client_side(&self) -> ring::Side<'_> {
        self.lay.0.side(1 - self.side)
    }

    pub(super) fn setup_is_waiting(&self) -> bool {
        matches!(*self.setup.lock().unwrap(), Setup::Waiting)
    }

    /// Accepted (by the peer, or by us for a peer's CONNECT): a second
    /// ACCEPT or a REFUSE for it breaks the protocol.
    pub(super) fn is_set_up(&self) -> bool {
        matches!(*self.setup.lock().unwrap(), Setup::Accepted)
    }

    pub(super) fn accepted(&self, peer_conn: u64, credit: u64) {
        self.peer_conn.store(peer_conn, Ordering::Relaxed);
        self.peer_ring.store(credit, Ordering::Relaxed);
        self.limit.store(credit, Ordering::Release);
        *self.setup.lock().unwrap() = Setup::Accepted;
    }

    pub(super) fn refuse(&self, code: ErrorCode, msg: &str) {
        let mut s = self.setup.lock().unwrap();
        if matches!(*s, Setup::Waiting) {
            *s = Setup::Refused(code, msg.to_string());
        }
    }

    /// The peer closed, or the link died: the client sees our side closed.
    pub(super) fn peer_gone(&self) {
        self.peer_closed.store(true, Ordering::Release);
        self.router_side().close();
        self.client_side().force_wake();
    }

    /// Ends writing into the client's posted receives before the pump
    /// closes our side, after which a client that closed takes its posted
    /// buffers back at once: waits (bounded) for the frame a receiver
    /// thread may be writing into one. (Before, a client that closed while
    /// the router placed a message into its posted receive got its buffer
    /// back with the current frame still being written into it, in 4-5
    /// runs of 10 beside two busy loops:
    /// `a_dropped_connection_gets_no_more_bytes_into_its_posted_receives`.)
    pub(super) fn stop_placing(&self) {
        let t = Instant::now();
        loop {
            if let Ok(mut inb) = self.inb.try_lock() {
                if let Some(pl) = inb.placing.as_mut() {
                    pl.drop = true;
                }
                let mut posts = self.posts.lock().unwrap();
                posts.queue.clear();
                posts.closed = true;
                return;
            }
            // A receiver holds it for one frame at most.
            if t.elapsed() > Duration::from_secs(1) {
                limited!(warn, "conn-placing", &self.regions.tenant, "connection {}: a frame into a posted receive did not end within 1 s; closing anyway", self.local);
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Our client broke its ring: forwarding stops and the peer is told.
    /// (The log line is rate-limited per tenant: a tenant can break
    /// connection after connection.)
    pub(super) fn local_fault(&self, why: &str) {
        limited!(warn, "conn-fault", &self.regions.tenant, "connection {}: {why}; closing it", self.local);
        self.local_fault.store(true, Ordering::Release);
        self.router_side().force_wake();
    }

    /// Has our client bytes it did not read yet? (A hint: false while
    /// the receiver thread writes to the ring.)
    pub(super) fn client_unread(&self) -> bool {
        self.inb.try_lock().is_ok_and(|mut inb| inb.tx.unread())
    }

    /// Credit to return now, if enough was freed since the last CREDIT.
    ///
    /// Never waits for `inb`: its receiver thread holds it while it reads a
    /// frame's payload from the link, which can take as long as the peer
    /// router takes to send the rest (issue 17: a receiver covering this
    /// connection from another stream, waiting here, stopped reading its
    /// own stream; the peer's threads, waiting for room on that stream,
    /// never sent the rest, and the stalled stream's zero window ended the
    /// link). While it is held, None: the receiver looks at what the client
    /// consumed again when it has written the frame ([`Peer::on_data`]) and
    /// returns the credit then.
    pub(super) fn credit_due(&self) -> Option<u64> {
        let Ok(mut inb) = self.inb.try_lock() else { return None };
        let g = match inb.granted(self.ring) {
            Ok(g) => g,
            Err(e) => {
                drop(inb);
                self.local_fault(&e.to_string());
                return None;
            }
        };
        (g - self.reported.load(Ordering::Relaxed) >= self.ring / 4).then_some(g)
    }

    /// Does this connection's pump have something to do: data or credit to
    /// send, posts to drop, an end to report? (A pump's own unsent ACCEPT
    /// aside: a pump holding one never sleeps.) Checked after announcing
    /// the pump's sleep, by the pump or by a receiver handing it back.
    pub(super) fn needs_pump(&self, peer: &Peer) -> bool {
        if peer.dead.load(Ordering::Acquire)
            || self.peer_closed.load(Ordering::Acquire)
            || self.local_fault.load(Ordering::Acquire)
            || self.client_side().is_closed()
            || self.unpost_asked()
        {
            return true;
        }
        match self.out.try_lock() {
            Ok(out) => {
                if self.sendable(&out) || !out.unread.is_empty() {
                    return true;
                }
            }
            // A receiver thread is forwarding for us: look again after.
            Err(_) => return true,
        }
        self.credit_due().is_some()
    }
}

impl Fwd {
    /// One line of its forwarding state, for `Remote::describe` (a
    /// stalled transfer shows where its bytes stopped). Never waits: a
    /// half held by a thread now says so.
    pub(super) fn describe(&self) -> String {
        let (rs, cs) = (self.router_side(), self.client_side());
        let mut s = format!(
            "connection {} (peer {}, client {}, worker {}, stream {}): limit {} reported {} covered {} peer_closed {} local_fault {} client_closed {} wake {} unpost_req {} unposted {}",
            self.local,
            self.peer_conn.load(Ordering::Relaxed),
            self.client,
            self.worker.load(Ordering::Relaxed) as isize,
            self.stream(),
            self.limit.load(Ordering::Relaxed),
            self.reported.load(Ordering::Relaxed),
            self.covered.load(Ordering::Relaxed),
            self.peer_closed.load(Ordering::Relaxed),
            self.local_fault.load(Ordering::Relaxed),
            cs.is_closed(),
            rs.wake.load(Ordering::Relaxed),
            cs.unpost_req.load(Ordering::Relaxed),
            rs.unposted.load(Ordering::Relaxed),
        );
        match self.out.try_lock() {
            Ok(out) => s += &format!(
                "; out: charged {} need {:?} rec_off {} pending {} ({} B) shadow {} framed {} unread {} ring_data {}",
                out.charged,
                out.need,
                out.rec_off,
                out.pending.len(),
                out.pending_bytes,
                out.shadow.as_ref().map_or("none".into(), |sh| format!("{}/{} of {}", sh.sent, sh.n, sh.total)),
                out.shadow_framed,
                out.unread.len(),
                out.rx.has_data(),
            ),
            Err(_) => s += "; out: held",
        }
        match self.inb.try_lock() {
            Ok(mut inb) => {
                let granted = inb.granted(self.ring).map_or_else(|e| e.to_string(), |g| g.to_string());
                let posts: Vec<String> = self.posts.lock().unwrap().queue.iter().map(|p| format!("{}:{}:{}", p.idx, p.gen, p.cap)).collect();
                s += &format!(
                    "; in: msgs {} charged {} excess {} ahead {} granted {} posts [{}] placing {}",
                    inb.msgs,
                    inb.charged,
                    inb.excess,
                    inb.ahead,
                    granted,
                    posts.join(" "),
                    inb.placing.as_ref().map_or("none".into(), |p| format!("msg {} {}/{} drop {}", p.post.idx, p.got, p.total, p.drop)),
                );
            }
            Err(_) => s += "; in: held",
        }
        s
    }
}

pub(super) fn spawn_pump(peer: Arc<Peer>, link: Arc<dyn Link>, f: Arc<Fwd>, first: Option<Vec<u8>>) {
    let _ = f.route.set((Arc::downgrade(&peer), link.clone()));
    if let Some(r) = peer.remote.upgrade() {
        let mut by = r.by_client.lock().unwrap();
        let v = by.entry(f.client).or_default();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&f));
        by.retain(|_, v| !v.is_empty());
    }
    let Some(r) = peer.remote.upgrade() else {
        peer.conns.lock().unwrap().remove(&f.local);
        return f.peer_gone();
    };
    if let Err(e) = r.pumps.add(Pump::new(peer.clone(), link, f.clone(), first)) {
        log::error!("cannot start forwarding connection {}: {e}", f.local);
        peer.conns.lock().unwrap().remove(&f.local);
        f.peer_gone();
    }
}

/// The sending half of a forwarded connection: what the client wrote leaves
/// through whoever holds this, the connection's pump thread or (right after
/// it delivered to the connection) the stream's receiver thread.
pub(super) struct Out {
    /// Reads the client's ring in hold mode: records go back to the client
    /// only once sent, so frames point straight into the ring (no copy) and
    /// many go with one system call.
    rx: Rx,
    /// Credit used so far.
    pub(super) charged: u64,
    /// Bytes of the current record already queued (records larger than a
    /// frame go in several).
    rec_off: usize,
    /// That record's header as it was when its first frame went: its
    /// header lies in the client's ring, which the client may rewrite
    /// meanwhile, and its frames must agree with their first.
    rec_first: Option<ring::Record>,
    /// Where the client's records stand in its message stream.
    framing: Framing,
    /// Credit the next frame needs, when it had to wait for credit.
    pub(super) need: Option<u64>,
    /// Frames queued, not sent yet (their bytes are held in the ring, or
    /// in the regions `held` keeps mapped).
    pending: Vec<Frame>,
    pending_bytes: usize,
    /// The shadow-memory reference being sent, if any.
    pub(super) shadow: Option<OutShadow>,
    held: Vec<Arc<SharedMem>>,
    /// References framed so far; once their frames are sent, the client
    /// learns it through our `shadow_done` word (its buffer is free again).
    shadow_framed: u64,
    /// Gathers sent whose payloads the peer router may still be reading
    /// (`Link::send_unacked`), oldest first: their ring bytes and regions
    /// go back to the client once it has.
    pub(super) unread: VecDeque<Unread>,
}

/// The message a client's records are in, checked before any of them
/// becomes a frame: the peer router holds frames to the message they
/// announce (a placed message must arrive whole, in order, as long as it
/// said) and rightly ends the link, shared by every tenant, on a frame that
/// breaks that. So a client's stream that breaks it fails its connection
/// here, alone.
#[derive(Default)]
struct Framing {
    /// The current message's size.
    total: u64,
    /// Its bytes not framed yet; 0 between messages.
    left: u64,
}

impl Framing {
    /// Takes a record of `len` message bytes (a shadow reference: the bytes
    /// it names) announcing a message of `total`.
    fn take(&mut self, kind: u32, total: u64, len: u64) -> Result<(), Stop> {
        let bad = |why: &str| Err(Stop::Local(format!("a client's records break its messages: {why}")));
        if kind == ring::REC_FIRST {
            if self.left > 0 {
                return bad("a message started inside another");
            }
            if len > total {
                return bad("a first record longer than its message");
            }
            (self.total, self.left) = (total, total - len);
            return Ok(());
        }
        if self.left == 0 {
            return bad("a continuation outside a message");
        }
        if total != self.total || len > self.left {
            return bad("a continuation that disagrees with its message");
        }
        self.left -= len;
        Ok(())
    }
}

/// A gather sent, not yet known to be read by the peer.
pub(super) struct Unread {
    ticket: u64,
    /// Our ring position after it: the bytes before go back once read.
    tail: u64,
    shadow_framed: u64,
    /// The regions its frames point into, mapped until then.
    _held: Vec<Arc<SharedMem>>,
}

/// The bytes a [`ring::REC_SHADOW`] record named: `n` from offset `off` of
/// the region's data, `sent` so far, as part of a message of `total`.
pub(super) struct OutShadow {
    pub(super) mem: Arc<SharedMem>,
    pub(super) off: usize,
    pub(super) n: usize,
    pub(super) sent: usize,
    pub(super) tag: u32,
    pub(super) total: u64,
    /// The region is registered with the link (`Link::register_region`):
    /// the peer router reads big frames straight out of it.
    pub(super) direct: bool,
}

// SAFETY: the frames point into the connection's ring, which the Fwd that
// owns this keeps mapped; they are only used by whoever holds the lock.
unsafe impl Send for Out {}

impl Out {
    /// Queues a frame of `len` bytes at `ptr` that costs `credit`.
    fn queue(&mut self, hdr: [u8; wire::HDR_LEN], ptr: *const u8, len: usize, credit: u64) {
        self.pending.push(Frame { hdr, ptr, len });
        self.pending_bytes += wire::HDR_LEN + len;
        self.charged += credit;
    }

    /// Everything the client wrote is sent: no record left in the ring, no
    /// frame queued, no shadow-memory reference half sent.
    pub(super) fn drained(&self) -> bool {
        !self.rx.has_data() && self.pending.is_empty() && self.shadow.is_none()
    }

    /// Enough is queued to send in one system call.
    fn full(&self) -> bool {
        self.pending_bytes >= gather() || self.pending.len() >= GATHER_FRAMES
    }

    fn new(mut rx: Rx) -> Out {
        rx.hold();
        Out {
            rx,
            charged: 0,
            rec_off: 0,
            rec_first: None,
            framing: Framing::default(),
            need: None,
            pending: Vec::new(),
            pending_bytes: 0,
            shadow: None,
            held: Vec::new(),
            shadow_framed: 0,
            unread: VecDeque::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Waits while the link is full (the pump).
    Block,
    /// Never waits (a receiver thread): stops at the first frame the link
    /// cannot take now.
    Try,
}

/// How much one [`Fwd::forward`] call may hand to the link.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Quantum {
    /// Everything credit allows (a connection alone on its worker, or
    /// forwarded by a receiver thread).
    All,
    /// About one gather ([`gather`]; `FF_ROUTER_TURN` bytes when set
    /// smaller, experiments), and at most the given bytes: a turn among
    /// other busy connections of a pump worker, so that every connection
    /// gets the same share of the worker and of the link, whoever comes
    /// first in a turn. The worker caps it at half the smallest ring among
    /// its busy connections ([`Fwd::turn_ring`]): a connection can fill
    /// such a turn every time, so one with a bigger ring gets no more.
    Turn(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Moved {
    Nothing,
    Some,
    /// Try mode: sent some, then the link could not take more now.
    Partly,
    /// Try mode: the link could not take more now; the pump must go on.
    Blocked,
}

pub(super) enum Stop {
    /// The link failed: the whole link goes.
    Link(String),
    /// This connection's client broke its ring.
    Local(String),
}

impl Fwd {
    pub(super) fn stream(&self) -> usize {
        self.stream.load(Ordering::Relaxed)
    }

    /// Sends frames; Ok(false) when Try mode found the link busy.
    pub(super) fn send(&self, link: &dyn Link, frames: &[Frame], mode: Mode) -> Result<bool, Stop> {
        let s = self.stream();
        // SAFETY: callers pass pointers into the ring (the record is not
        // consumed before this returns) or into their own buffers.
        let r = unsafe {
            match mode {
                Mode::Block => link.send(s, frames).map(|_| link::Try::Sent),
                Mode::Try => link.try_send(s, frames),
            }
        };
        match r {
            Ok(link::Try::Sent) => Ok(true),
            Ok(link::Try::Busy) => Ok(false),
            Err(e) => Err(Stop::Link(format!("send failed: {e}"))),
        }
    }

    /// Once a gather is full, hands it to the link; `Some` when the turn
    /// ends there: the link had no room (`Partly` if this turn handed it
    /// something before, else `Blocked`), or the turn's `quantum` is spent.
    fn hand_full(&self, out: &mut Out, link: &dyn Link, mode: Mode, handed: &mut usize, quantum: usize) -> Result<Option<Moved>, Stop> {
        // A quantum smaller than a gather ends the turn before it is full.
        let enough = quantum < gather() && *handed + out.pending_bytes >= quantum;
        if !out.full() && !enough {
            return Ok(None);
        }
        let n = out.pending_bytes;
        if !self.flush(out, link, mode)? {
            return Ok(Some(if *handed > 0 { Moved::Partly } else { Moved::Blocked }));
        }
        *handed += n;
        Ok((*handed >= quantum).then_some(Moved::Some))
    }

    /// Forwards what the client wrote, as far as credit allows, and
    /// returns once it handed `quantum` bytes or more to the link (a pump
    /// worker's turn among other busy connections: [`Quantum`]).
    pub(super) fn forward(&self, out: &mut Out, link: &dyn Link, mode: Mode, quantum: Quantum) -> Result<Moved, Stop> {
        if self.unpost_asked() {
            // Never waits for the receiver thread (see `credit_due`): while
            // it holds `inb`, the request stays asked and `ready()` keeps
            // the connection awake to try again.
            if let Ok(mut inb) = self.inb.try_lock() {
                inb.unpost(&self.posts, self.client_side(), self.router_side());
            }
        }
        let quantum = match quantum {
            Quantum::Turn(cap) => turn_quantum().min(cap.max(1)),
            Quantum::All => usize::MAX,
        };
        // Bytes handed to the link by this call.
        let mut handed = out.pending_bytes;
        if !self.flush(out, link, mode)? {
            return Ok(Moved::Blocked);
        }
        let peer_ring = self.peer_ring.load(Ordering::Relaxed);
        let (wmax, fmax) = (wire::whole_max(peer_ring), wire::frame_max(peer_ring));
        let peer_conn = self.peer_conn.load(Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Acquire);
        let mut moved = Moved::Nothing;
        out.need = None;
        loop {
            if let Some(sh) = &mut out.shadow {
                // From the region straight onto the wire (TCP), or read
                // from it by the peer router's NIC (RDMA, when the region
                // could be registered; otherwise its frames are copied, in
                // pieces the link can take).
                let most = if sh.direct { fmax } else { fmax.min(link.unregistered_max()) };
                let flen = (sh.n - sh.sent).min(most);
                let c = wire::charge(REC_CONT, sh.total, flen, wmax);
                if out.charged + c > limit {
                    out.need = Some(c);
                    break;
                }
                let hdr = Header::data(peer_conn, REC_CONT, sh.tag, sh.total, flen).encode();
                // SAFETY: off + n was checked against the region's data,
                // which `held` keeps mapped until the frame is sent.
                let src = unsafe { sh.mem.as_ptr().add(shm::region_header() + sh.off + sh.sent) };
                if sh.sent == 0 {
                    out.held.push(sh.mem.clone());
                }
                sh.sent += flen;
                if sh.sent == sh.n {
                    out.shadow = None;
                    out.shadow_framed += 1;
                }
                out.queue(hdr, src, flen, c);
                moved = Moved::Some;
                if let Some(end) = self.hand_full(out, link, mode, &mut handed, quantum)? {
                    return Ok(end);
                }
                continue;
            }
            let rec = match out.rx.peek() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(Stop::Local(e.to_string())),
            };
            if rec.kind == ring::REC_SHADOW {
                let mut sh = self.shadow_ref(&mut out.rx, rec)?;
                out.framing.take(rec.kind, sh.total, sh.n as u64)?;
                sh.direct = link.register_region(&sh.mem);
                out.shadow = Some(sh);
                out.rx.consume(rec.len);
                continue;
            }
            if rec.kind == ring::REC_POST {
                self.post(&out.rx, rec, link)?;
                out.rx.consume(rec.len);
                continue;
            }
            if rec.kind == ring::REC_PLACED {
                return Err(Stop::Local("a client wrote a router's record".into()));
            }
            if out.rec_off > 0 && out.rec_first != Some(rec) {
                // Its later frames would not match what the first told the
                // peer router, which would rightly end the link (shared by
                // every tenant): the connection goes alone.
                return Err(Stop::Local("a client rewrote a record while it was being sent".into()));
            }
            let flen = (rec.len - out.rec_off).min(fmax);
            let kind = if out.rec_off == 0 { rec.kind } else { REC_CONT };
            let c = wire::charge(kind, rec.total, flen, wmax);
            if out.charged + c > limit {
                out.need = Some(c);
                break;
            }
            if out.rec_off == 0 {
                out.framing.take(rec.kind, rec.total, rec.len as u64)?;
            }
            let hdr = Header::data(peer_conn, kind, rec.tag, rec.total, flen).encode();
            // SAFETY: peek validated that the record's `len` bytes lie in
            // the ring; rec_off + flen <= len. The bytes stay ours (hold
            // mode) until the frame is sent.
            let src = unsafe { out.rx.payload().add(out.rec_off) };
            out.queue(hdr, src, flen, c);
            out.rec_off += flen;
            out.rec_first = Some(rec);
            moved = Moved::Some;
            if out.rec_off == rec.len {
                out.rx.consume(rec.len);
                out.rec_off = 0;
                out.rec_first = None;
            }
            if let Some(end) = self.hand_full(out, link, mode, &mut handed, quantum)? {
                return Ok(end);
            }
        }
        if !self.flush(out, link, mode)? {
            return Ok(if handed > 0 { Moved::Partly } else { Moved::Blocked });
        }
        Ok(moved)
    }

    /// Checks a client's shadow-memory reference: a region of the
    /// connection's tenant, named with one of its keys, and bytes inside it.
    fn shadow_ref(&self, rx: &mut Rx, rec: ring::Record) -> Result<OutShadow, Stop> {
        let bad = |why: &str| Stop::Local(format!("bad shadow-memory reference: {why}"));
        if rec.len != ring::ShadowRef::LEN || rec.total == 0 {
            return Err(bad("malformed"));
        }
        let mut b = [0u8; ring::ShadowRef::LEN];
        // SAFETY: peek validated rec.len bytes of payload.
        unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
        let r = ring::ShadowRef::decode(&b);
        let mem = self.regions.get(r.key.region, r.key.key).ok_or_else(|| bad("no such region of this tenant"))?;
        let data = (mem.len() - shm::region_header()) as u64;
        let off = r.addr.checked_sub(r.key.base).filter(|o| o.checked_add(r.n).is_some_and(|e| e <= data));
        match off {
            Some(off) if r.n > 0 && r.n <= rec.total => {
                Ok(OutShadow { mem, off: off as usize, n: r.n as usize, sent: 0, tag: rec.tag, total: rec.total, direct: false })
            }
            _ => Err(bad("outside its region")),
        }
    }

    /// Takes a receive the client posted in its shadow memory: a region of
    /// the connection's tenant named with its read-write key, and bytes
    /// inside it. Posts for messages already started, withdrawn ones, and
    /// ones naming no region we can write, are dropped. Never waits for the
    /// receiver thread (see `credit_due`): posts have a lock of their own
    /// ([`Posts`]).
    /// Over a link that pins memory (RDMA), the region is registered with
    /// it, so that payloads are READ straight into it.
    fn post(&self, rx: &Rx, rec: ring::Record, link: &dyn Link) -> Result<(), Stop> {
        let bad = |why: &str| Stop::Local(format!("bad posted receive: {why}"));
        if rec.len != ring::PostRef::LEN {
            return Err(bad("malformed"));
        }
        let mut b = [0u8; ring::PostRef::LEN];
        // SAFETY: peek validated rec.len bytes of payload.
        unsafe { rx.copy_out(0, b.as_mut_ptr(), rec.len) };
        let r = ring::PostRef::decode(&b);
        // A region freed meanwhile is no fault: the client may have taken
        // the message from the ring and freed the buffer while this post
        // waited behind its sends. Nor is a key that grants nothing: the
        // post is just not used.
        let Some(mem) = self.regions.writable(r.key.region, r.key.key) else { return Ok(()) };
        let data = (mem.len() - shm::region_header()) as u64;
        let off = r.addr.checked_sub(r.key.base).filter(|o| o.checked_add(r.cap).is_some_and(|e| e <= data));
        let off = off.ok_or_else(|| bad("outside its region"))? as usize;
        link.register_region(&mem);
        // Withdrawals the client asked for first, if the receiver thread
        // is between frames (a post of a newer generation is kept either
        // way, an older one dropped once they are carried out).
        if let Ok(mut inb) = self.inb.try_lock() {
            inb.unpost(&self.posts, self.client_side(), self.router_side());
        }
        let mut posts = self.posts.lock().unwrap();
        if posts.closed || r.gen < posts.unposted || r.idx < posts.started {
            return Ok(());
        }
        if posts.queue.len() >= MAX_POSTS {
            return Err(bad("too many"));
        }
        posts.queue.push_back(Post { idx: r.idx, gen: r.gen, tag: rec.tag, mem, off, cap: r.cap });
        Ok(())
    }

    /// Did the client withdraw its posts since we last looked?
    fn unpost_asked(&self) -> bool {
        self.client_side().unpost_req.load(Ordering::Relaxed) > self.router_side().unposted.load(Ordering::Relaxed)
    }

    /// Sends the queued frames, and gives their bytes back to the client
    /// once the peer has them (at once over TCP; over RDMA once the peer
    /// router has READ the big payloads: see [`Fwd::settle`]); false when
    /// Try mode found the link busy (they stay queued).
    fn flush(&self, out: &mut Out, link: &dyn Link, mode: Mode) -> Result<bool, Stop> {
        if out.pending.is_empty() {
            if out.unread.is_empty() {
                // Records that make no frame (posted receives) are consumed
                // too: they go back now. Else a client that only receives
                // fills its ring with posts and can never send again.
                self.give_back_all(out, out.shadow_framed);
            }
            return Ok(true);
        }
        let ticket = match mode {
            // SAFETY: the frames point into the ring (bytes held until
            // settled) or into regions `held` keeps mapped until then.
            Mode::Block => unsafe { link.send_unacked(self.stream(), &out.pending) }.map_err(|e| Stop::Link(format!("send failed: {e}")))?,
            Mode::Try => {
                if !self.send(link, &out.pending, mode)? {
                    return Ok(false);
                }
                0
            }
        };
        out.pending.clear();
        out.pending_bytes = 0;
        if ticket == 0 && out.unread.is_empty() {
            // Nothing left for the peer to read (always over TCP): give
            // the bytes back now.
            out.held.clear();
            self.give_back_all(out, out.shadow_framed);
            return Ok(true);
        }
        let held = std::mem::take(&mut out.held);
        out.unread.push_back(Unread { ticket, tail: out.rx.position(), shadow_framed: out.shadow_framed, _held: held });
        self.settle(out, link, Duration::ZERO)?;
        Ok(true)
    }

    /// Gives back to the client what the peer has finished reading, oldest
    /// gather first, waiting at most `wait` for the first: the ring bytes,
    /// and the referenced buffers (a reference still being framed is not
    /// counted yet). True if anything went back.
    pub(super) fn settle(&self, out: &mut Out, link: &dyn Link, wait: Duration) -> Result<bool, Stop> {
        let mut back = None;
        while let Some(u) = out.unread.front() {
            let w = if back.is_none() { wait } else { Duration::ZERO };
            match link.reads_done(self.stream(), u.ticket, w) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(Stop::Link(format!("send failed: {e}"))),
            }
            let u = out.unread.pop_front().unwrap();
            back = Some((u.tail, u.shadow_framed));
        }
        let Some((tail, shadow_framed)) = back else { return Ok(false) };
        if out.unread.is_empty() && out.pending.is_empty() {
            // Everything sent is read: records consumed since (posts) too.
            self.give_back_all(out, shadow_framed);
        } else {
            let freed = out.rx.release_to(tail);
            self.give_back(freed, shadow_framed);
        }
        Ok(true)
    }

    /// Gives back every ring byte consumed so far (nothing sent is still
    /// being read) and the referenced buffers up to `shadow_framed`; the
    /// ring stays held for what comes next.
    fn give_back_all(&self, out: &mut Out, shadow_framed: u64) {
        let freed = out.rx.release();
        out.rx.hold();
        self.give_back(freed, shadow_framed);
    }

    /// Ring bytes were given back (`freed`), and the client's referenced
    /// buffers up to `shadow_framed` are free: wake the client only when it
    /// got something back (frames in the middle of a big reference give it
    /// nothing).
    fn give_back(&self, freed: bool, shadow_framed: u64) {
        let done = self.router_side().shadow_done.swap(shadow_framed, Ordering::AcqRel) != shadow_framed;
        if freed || done {
            self.client_side().notify();
        }
    }

    /// Is there something the pump can send now: queued frames, or, credit
    /// allowing, the rest of a shadow-memory reference or records in the
    /// ring? (The reference counts although its record has left the ring:
    /// before, a pump that ran out of credit in the middle of one and
    /// looked here after announcing its sleep slept through the CREDIT that
    /// had come meanwhile, and the connection stopped for good; the
    /// TensorFlow example across two hosts hung so in about 1 run in 17.)
    pub(super) fn sendable(&self, out: &Out) -> bool {
        if !out.pending.is_empty() {
            return true;
        }
        (out.shadow.is_some() || out.rx.has_data()) && out.need.is_none_or(|c| out.charged + c <= self.limit.load(Ordering::Acquire))
    }
}
