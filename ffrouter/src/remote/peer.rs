//! A link to another router as this router holds it ([`Peer`]; dialing and
//! accepting its streams are `remote.rs`'s): it sends the CONNECTs of
//! clients that waited for it, runs a receiver thread per stream (frames
//! into rings and posted receives, covers: see [`super::cover`]), a control
//! thread for queued frames and a ping thread, and when the link dies fails
//! every connection on it.

use super::*;

/// One link to another router, dialed or accepted.
pub struct Peer {
    pub(super) name: String,
    /// Set for links this router dialed (their key in `Remote::out`).
    addr: Option<SocketAddr>,
    /// The peer router's id, once its handshake proved it.
    pub(super) peer_id: std::sync::OnceLock<[u8; 16]>,
    pub(super) remote: Weak<Remote>,
    pub(super) inner: Mutex<PeerInner>,
    pub(super) conns: Mutex<HashMap<u64, Arc<Fwd>>>,
    pub(super) dead: AtomicBool,
    ctrl: Mutex<VecDeque<(usize, Vec<u8>)>>,
    /// The control thread waits on this one (with `ctrl`)...
    ctrl_cv: Condvar,
    /// ...and the ping thread on this one (also with `ctrl`), so that a
    /// wake-up meant for the control thread never lands on the ping
    /// thread: a stream's unsent tail then waited for the control thread's
    /// next look (up to [`PING_EVERY`]), and the ping thread woke ~1,800
    /// times a second for nothing while credit went back on a busy link.
    ping_cv: Condvar,
    /// Bytes of answers queued in `ctrl` since the control thread last
    /// took the queue ([`MAX_ANSWERS_QUEUED`]).
    answers: AtomicUsize,
    /// When the link last made a step of its setup (dial began, a stream
    /// dialed, an RDMA setup step of either side, up): connects waiting for
    /// it are waited for [`CONNECT_TIMEOUT`] from there.
    pub(super) progress: Mutex<Instant>,
}

#[derive(Default)]
pub(super) struct PeerInner {
    pub(super) link: Option<Arc<dyn Link>>,
    /// Connects waiting for the link to come up, with the router id
    /// their handle names.
    waiting: Vec<(Arc<Fwd>, wire::Connect, [u8; 16])>,
}

impl Peer {
    pub(super) fn new(name: String, addr: Option<SocketAddr>, remote: Weak<Remote>) -> Arc<Peer> {
        Arc::new(Peer {
            name,
            addr,
            peer_id: std::sync::OnceLock::new(),
            remote,
            inner: Mutex::default(),
            conns: Mutex::default(),
            dead: AtomicBool::new(false),
            ctrl: Mutex::default(),
            ctrl_cv: Condvar::new(),
            ping_cv: Condvar::new(),
            answers: AtomicUsize::new(0),
            progress: Mutex::new(Instant::now()),
        })
    }

    /// The link's setup made a step.
    pub(super) fn step(&self) {
        *self.progress.lock().unwrap() = Instant::now();
    }

    /// The link is up: start its threads and send what waited for it.
    pub(super) fn up(self: &Arc<Self>, remote: &Arc<Remote>, link: Arc<dyn Link>) {
        self.step();
        // Recorded before any of its threads runs: a receiver that finds a
        // violation in the link's first frame kills the peer, and `kill`
        // shuts down and uncounts the link it finds here. (Recorded after,
        // such a kill found no link, which then stayed open and counted.)
        {
            let mut i = self.inner.lock().unwrap();
            if self.dead.load(Ordering::Acquire) {
                drop(i);
                link.shutdown();
                return;
            }
            remote.links.fetch_add(1, Ordering::Relaxed);
            i.link = Some(link.clone());
        }
        for s in 0..link.streams() {
            let (p, l, r) = (self.clone(), link.clone(), remote.clone());
            let spawned = std::thread::Builder::new().name(format!("peer-rx-{s}")).spawn(move || p.receive(&r, &l, s));
            if let Err(e) = spawned {
                return self.kill(Cause::Local, &format!("cannot start a receiver: {e}"));
            }
        }
        let (p, l) = (self.clone(), link.clone());
        if let Err(e) = std::thread::Builder::new().name("peer-ctrl".into()).spawn(move || p.control_loop(&l)) {
            return self.kill(Cause::Local, &format!("cannot start the control thread: {e}"));
        }
        let (p, l) = (self.clone(), link.clone());
        if let Err(e) = std::thread::Builder::new().name("peer-ping".into()).spawn(move || p.ping_loop(&l)) {
            return self.kill(Cause::Local, &format!("cannot start the ping thread: {e}"));
        }
        // (Connects that came meanwhile went out at once; a kill meanwhile
        // refused these.)
        let waiting = std::mem::take(&mut self.inner.lock().unwrap().waiting);
        for (f, body, want) in waiting {
            self.submit(remote, f, body, want);
        }
    }

    /// Sends a CONNECT for `f` once the link is up, if the router at the
    /// other end is the one its handle names (`want`; all zeros: whichever
    /// router answers at the address, for names with no room for the id,
    /// such as ffverbs' GIDs; the listener's nonce and tenant still decide).
    pub(super) fn submit(self: &Arc<Self>, _remote: &Arc<Remote>, f: Arc<Fwd>, body: wire::Connect, want: [u8; 16]) {
        let link = {
            let mut i = self.inner.lock().unwrap();
            if self.dead.load(Ordering::Acquire) {
                drop(i);
                return f.refuse(ErrorCode::Unreachable, &format!("{} is down", self.name));
            }
            match &i.link {
                Some(l) => l.clone(),
                None => {
                    i.waiting.push((f, body, want));
                    return;
                }
            }
        };
        if want != [0; 16] && self.peer_id.get() != Some(&want) {
            return f.refuse(ErrorCode::NotFound, &format!("{}: another router answers there than the handle names (stale or forged handle)", self.name));
        }
        let s = data_stream(&*link, f.local);
        f.stream.store(s, Ordering::Relaxed);
        if let Err(e) = f.register(&link) {
            return f.refuse(ErrorCode::Internal, &format!("cannot register memory: {e}"));
        }
        self.conns.lock().unwrap().insert(f.local, f.clone());
        if self.dead.load(Ordering::Acquire) {
            // Raced with kill(): it may not have seen this connection.
            self.conns.lock().unwrap().remove(&f.local);
            return f.refuse(ErrorCode::Unreachable, &format!("{} is down", self.name));
        }
        // On the set-up stream, never behind data; from this thread when
        // the stream takes it now (it nearly always does), else queued for
        // the control thread.
        trace_connect("connect-queued", f.local);
        self.send_or_queue(&*link, ctrl_stream(&*link), wire::control_frame(wire::CONNECT, f.local, &body));
    }

    /// Sends a control frame on stream `s` now if the link takes it
    /// without waiting, else queues it for the control thread.
    fn send_or_queue(&self, link: &dyn Link, s: usize, frame: Vec<u8>) {
        if !self.send_now(link, s, &frame) {
            self.control(s, frame);
        }
    }

    /// Sends a control frame on stream `s` if the link takes it without
    /// waiting: false when it would have had to wait (nothing was sent);
    /// true when it went, or the link failed (and is killed).
    pub(super) fn send_now(&self, link: &dyn Link, s: usize, frame: &[u8]) -> bool {
        let fr = Frame::of(frame);
        // SAFETY: the payload lives in `frame` for the call.
        match unsafe { link.try_send(s, &[fr]) } {
            Ok(link::Try::Sent) => {
                match Header::decode(&fr.hdr) {
                    Ok(h) if h.ty == wire::CONNECT => trace_connect("connect-sent", h.conn),
                    Ok(h) if h.ty == wire::ACCEPT => trace_connect("accept-sent", h.conn),
                    _ => {}
                }
                self.flush_later(link, s);
                true
            }
            Ok(link::Try::Busy) => false,
            Err(e) => {
                self.kill(Cause::of(&e), &format!("send failed: {e}"));
                true
            }
        }
    }

    /// Queues an answer to a frame of the peer's (see
    /// [`MAX_ANSWERS_QUEUED`]).
    pub(super) fn queue_answer(&self, s: usize, frame: Vec<u8>) {
        let queued = self.answers.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
        if queued > MAX_ANSWERS_QUEUED {
            return self.kill(Cause::Protocol, &format!("the peer router does not read the answers to its requests ({queued} bytes queued)"));
        }
        self.control(s, frame);
    }

    /// Queues a control frame for the control thread.
    fn control(&self, s: usize, frame: Vec<u8>) {
        self.ctrl.lock().unwrap().push_back((s, frame));
        self.ctrl_cv.notify_one();
    }

    /// Pings every stream every [`PING_EVERY`], on a thread of its own:
    /// `Link::ping` never waits behind a stream's senders, so no data-path
    /// wait (a stream busy with a slow peer, a control frame waiting for
    /// room) can keep the peer from hearing that this router lives.
    fn ping_loop(self: &Arc<Self>, link: &Arc<dyn Link>) {
        let mut q = self.ctrl.lock().unwrap();
        loop {
            if self.dead.load(Ordering::Acquire) {
                return;
            }
            drop(q);
            for s in 0..link.streams() {
                if let Err(e) = link.ping(s) {
                    return self.kill(Cause::of(&e), &format!("send failed: {e}"));
                }
            }
            if (0..link.streams()).any(|s| link.needs_flush(s)) {
                // Part of a PING is waiting: the control thread sends it.
                self.ctrl_cv.notify_one();
            }
            q = self.ctrl.lock().unwrap();
            let until = Instant::now() + PING_EVERY;
            while !self.dead.load(Ordering::Acquire) && Instant::now() < until {
                q = self.ping_cv.wait_timeout(q, until.saturating_duration_since(Instant::now())).unwrap().0;
            }
        }
    }

    /// Sends queued control frames, and what `Link::try_send` left queued
    /// (looking at least every [`PING_EVERY`]).
    fn control_loop(self: &Arc<Self>, link: &Arc<dyn Link>) {
        let mut next_look = Instant::now();
        loop {
            let items: Vec<(usize, Vec<u8>)> = {
                let mut q = self.ctrl.lock().unwrap();
                loop {
                    if self.dead.load(Ordering::Acquire) {
                        return;
                    }
                    let now = Instant::now();
                    if !q.is_empty() || now >= next_look || (0..link.streams()).any(|s| link.needs_flush(s)) {
                        break;
                    }
                    q = self.ctrl_cv.wait_timeout(q, next_look - now).unwrap().0;
                }
                self.answers.store(0, Ordering::Relaxed);
                q.drain(..).collect()
            };
            next_look = Instant::now() + PING_EVERY;
            // Frames on the set-up stream first: nothing there waits for a
            // data stream's room.
            let c = ctrl_stream(&**link);
            let (mut items, rest): (Vec<_>, Vec<_>) = items.into_iter().partition(|(s, _)| *s == c);
            items.extend(rest);
            for (s, f) in items {
                let fr = Frame::of(&f);
                let h = Header::decode(&fr.hdr).ok().filter(|h| h.ty == wire::CONNECT);
                if let Some(h) = h {
                    trace_connect("connect-dequeued", h.conn);
                }
                // SAFETY: the payload lives in `f` for the call.
                if let Err(e) = unsafe { link.send(s, &[fr]) } {
                    return self.kill(Cause::of(&e), &format!("send failed: {e}"));
                }
                if let Some(h) = h {
                    trace_connect("connect-sent", h.conn);
                }
            }
            for s in 0..link.streams() {
                if let Err(e) = link.flush(s) {
                    return self.kill(Cause::of(&e), &format!("send failed: {e}"));
                }
            }
        }
    }

    /// Receiver thread of stream `s`.
    ///
    /// While request/response traffic flows, it also sends the answers of
    /// the connections it just delivered to ("covered" connections, see
    /// [`Cover`]), polling both the link and their rings, so that the hops
    /// client -> router -> link -> router -> client cost no wake-up and no
    /// pump thread competes for the cores. A connection leaves the cover
    /// after [`reply_window`] without traffic, or as soon as its pump is
    /// needed (the link is full, the pump is busy, the client closed).
    fn receive(self: &Arc<Self>, remote: &Arc<Remote>, link: &Arc<dyn Link>, s: usize) {
        let mut hot: Vec<Cover> = Vec::new();
        let mut last_pass = Instant::now();
        let mut yields = Polite::new(ffcore::polite::LOST_IN_A_ROW);
        let why = loop {
            if !hot.is_empty() {
                // Waits on the link (polling) only while something is covered;
                // when frames keep coming, still serves the covered rings often.
                if !link.readable(s) {
                    self.answer(link, s, &mut hot, &mut last_pass, &mut yields);
                } else if last_pass.elapsed() >= PASS_EVERY {
                    pass(&mut hot, &mut last_pass);
                }
            }
            let h = match link.recv_header(s) {
                Ok(b) => match Header::decode(&b) {
                    Ok(h) => h,
                    Err(e) => break Fault::from(format!("bad frame from the peer router: {e}")),
                },
                Err(e) => break e.into(),
            };
            if h.ty == wire::DATA && !reply_window().is_zero() {
                // Not while yields lose the core: then this thread sleeps
                // on the link between frames.
                if yields.may_yield() {
                    self.cover(remote, &mut hot, h.conn);
                } else {
                    yields.waited();
                }
            }
            if let Err(e) = self.dispatch(remote, link, s, h) {
                break e;
            }
        };
        drop(hot);
        self.kill(why.cause, &why.why);
    }

    /// Data arrived for connection `conn`: its client may answer on it, or
    /// on another of its connections to another host (UCX answers on its
    /// endpoint going the other way, often over the link the other router
    /// dialed). Covers all of them, or keeps them covered.
    fn cover(&self, remote: &Remote, hot: &mut Vec<Cover>, conn: u64) {
        if refresh(hot, conn) {
            return;
        }
        let Some(f) = self.conn(conn) else { return };
        let client = f.client;
        // The conversation's pace when its last cover ended: how long the
        // frame took to come since is a gap like those `refresh` sees.
        let pace = *f.pace.lock().unwrap();
        // Covers `g` if there is room; false once the cover is full.
        let mut take = |g: Arc<Fwd>| {
            if hot.len() >= MAX_COVERED {
                return false;
            }
            if !hot.iter().any(|c| c.f.local == g.local) {
                if let Some(c) = Cover::take(g) {
                    hot.push(c);
                }
            }
            hot.len() < MAX_COVERED
        };
        if take(f) {
            // Its client's other connections, until the cover is full: a
            // client with hundreds of connections costs a few looks per frame,
            // not one per connection (issue 17: collecting all 512 siblings
            // for every frame was 3 % of a receiver's time).
            if let Some(v) = remote.by_client.lock().unwrap().get(&client) {
                for g in v.iter().filter_map(Weak::upgrade) {
                    if g.local != conn && !take(g) {
                        break;
                    }
                }
            }
        }
        if let Some(last) = pace.last {
            keep_covered(hot, client, pace.window, last);
        }
    }

    /// Serves the covered connections until the link has more for us or
    /// none of them is left. Between looks it spins, unless a covered
    /// client polls from this core with bytes to read: then it yields. A
    /// yield that lost the core to a busy process ends the cover (the
    /// pumps serve those connections, asleep until their clients write).
    fn answer(&self, link: &Arc<dyn Link>, s: usize, hot: &mut Vec<Cover>, last_pass: &mut Instant, yields: &mut Polite) {
        let mut cpu = ring::current_cpu();
        let mut since = Instant::now();
        loop {
            for c in hot.iter() {
                c.f.router_side().set_cpu(cpu);
            }
            pass(hot, last_pass);
            if hot.is_empty() || link.readable(s) {
                return;
            }
            let needed = hot.iter().any(|c| c.f.client_side().polls_on(cpu) && c.f.client_unread());
            if needed || since.elapsed() >= rx_poll() {
                if needed {
                    // A client of ours needs this core to read: that yield
                    // lasts as long as its work, and is not judged.
                    std::thread::yield_now();
                } else if !yields.yield_now() {
                    CONTENDED.fetch_add(1, Ordering::Relaxed);
                    hot.clear();
                    return;
                }
                since = Instant::now();
                cpu = ring::current_cpu();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn dispatch(self: &Arc<Self>, remote: &Arc<Remote>, link: &Arc<dyn Link>, s: usize, h: Header) -> Result<(), Fault> {
        match h.ty {
            wire::DATA => self.on_data(link, s, h),
            wire::CREDIT => {
                if let Some(f) = self.conn(h.conn) {
                    f.limit.fetch_max(h.arg, Ordering::AcqRel);
                    f.router_side().force_wake();
                }
                Ok(())
            }
            wire::CLOSE => {
                let f = self.conns.lock().unwrap().remove(&h.conn);
                if let Some(f) = f {
                    // Its pump closes it for our client, once it has given
                    // back what the peer router acked before closing.
                    f.peer_closed.store(true, Ordering::Release);
                    f.router_side().force_wake();
                }
                Ok(())
            }
            wire::PING => Ok(()),
            ty => {
                let mut body = vec![0u8; h.len as usize];
                // SAFETY: body is valid for len bytes.
                unsafe { link.recv_payload(s, body.as_mut_ptr(), body.len()) }?;
                match ty {
                    wire::CONNECT => {
                        trace_connect("connect-received", h.conn);
                        let c: wire::Connect = wire::decode_body(&body)?;
                        remote.on_connect(self, link, s, h, c);
                    }
                    wire::ACCEPT => {
                        trace_connect("accept-received", h.conn);
                        let a: wire::Accept = wire::decode_body(&body)?;
                        if !wire::valid_credit(a.credit) {
                            return Err(format!("bad ring size {} in ACCEPT", a.credit).into());
                        }
                        match self.conn(h.conn) {
                            Some(f) if f.setup_is_waiting() => {
                                f.accepted(a.conn, a.credit);
                                spawn_pump(self.clone(), link.clone(), f, None);
                            }
                            Some(f) if f.is_set_up() => return Err(format!("ACCEPT for connection {}, which is set up already", h.conn).into()),
                            other => {
                                // Given up on meanwhile (timeout, client
                                // gone): tell the peer.
                                if other.is_some() {
                                    self.conns.lock().unwrap().remove(&h.conn);
                                }
                                self.queue_answer(s, Header::control(wire::CLOSE, a.conn, 0, 0).encode().to_vec());
                            }
                        }
                    }
                    wire::REFUSE => {
                        let r: wire::Refuse = wire::decode_body(&body)?;
                        if self.conn(h.conn).is_some_and(|f| f.is_set_up()) {
                            return Err(format!("REFUSE for connection {}, which is set up already", h.conn).into());
                        }
                        let f = self.conns.lock().unwrap().remove(&h.conn);
                        if let Some(f) = f {
                            let mut msg = format!("{}: {}", self.name, r.message);
                            msg.truncate(proto::MAX_STRING);
                            f.refuse(r.code, &msg);
                        }
                    }
                    _ => unreachable!("decode() checked the type"),
                }
                Ok(())
            }
        }
    }

    fn conn(&self, id: u64) -> Option<Arc<Fwd>> {
        self.conns.lock().unwrap().get(&id).cloned()
    }

    /// A DATA frame: straight into the connection's ring.
    fn on_data(&self, link: &Arc<dyn Link>, s: usize, h: Header) -> Result<(), Fault> {
        let len = h.len as usize;
        let Some(f) = self.conn(h.conn) else {
            // Closed on our side meanwhile.
            return Ok(link::skip_payload(&**link, s, len)?);
        };
        let kind = h.kind as u32;
        let wmax = wire::whole_max(f.ring);
        let c = wire::charge(kind, h.arg, len, wmax);
        let mut inb = f.inb.lock().unwrap();
        let granted = match inb.granted(f.ring) {
            Ok(g) => g,
            Err(e) => {
                drop(inb);
                f.local_fault(&e.to_string());
                return Ok(link::skip_payload(&**link, s, len)?);
            }
        };
        if inb.charged + c > granted {
            return Err(format!("connection {}: the peer router sent beyond its credit", f.local).into());
        }
        if f.client_side().is_closed() {
            if let Some(pl) = inb.placing.as_mut().filter(|pl| !pl.drop) {
                // The client is gone and may be taking its posts back:
                // stop writing into its buffers. The rest of the message
                // is dropped (nobody reads the ring, and its credit went
                // back when it started).
                pl.drop = true;
                inb.unpost(&f.posts, f.client_side(), f.router_side());
            }
        }
        let head0 = inb.tx.produced();
        let excess0 = inb.excess;
        let res: Result<(), Fault> = (|| {
            if kind == REC_FIRST {
                if inb.placing.is_some() {
                    return Err("a message started inside another".into());
                }
                inb.unpost(&f.posts, f.client_side(), f.router_side());
                inb.start(&f.posts, h.tag, h.arg, !f.client_side().is_closed());
                if inb.placing.is_some() {
                    // Its credit goes back before its bytes arrive.
                    self.credit(link, &f, granted + (inb.excess - excess0))?;
                }
            }
            if let Some(pl) = &mut inb.placing {
                // Straight into the client's posted receive.
                if pl.got + len as u64 > pl.total || h.arg != pl.total {
                    return Err("a message longer than it said".into());
                }
                if pl.drop {
                    link::skip_payload(&**link, s, len)?;
                } else {
                    // SAFETY: off + got + len <= off + total <= off + cap,
                    // which the post's check kept inside the region's data;
                    // the region stays mapped (pl holds it).
                    let dst = unsafe { pl.post.mem.as_ptr().add(shm::region_header() + pl.post.off + pl.got as usize) };
                    unsafe { link.recv_payload(s, dst, len) }?;
                }
                pl.got += len as u64;
                if pl.got < pl.total {
                    return Ok(());
                }
                let pl = inb.placing.take().unwrap();
                if !pl.drop {
                    let b = ring::Placed { idx: pl.post.idx, gen: pl.post.gen }.encode();
                    if !inb.tx.push_record(ring::REC_PLACED, h.tag, pl.total, &b).map_err(Fault::local)? {
                        return Err(Fault::local("no room for a credited frame"));
                    }
                }
                inb.unpost(&f.posts, f.client_side(), f.router_side());
                return Ok(());
            }
            if wire::is_whole(kind, h.arg, len, wmax) {
                let (p, _) = inb.tx.reserve(len, true).map_err(Fault::local)?.ok_or_else(|| Fault::local("no room for a credited frame"))?;
                // SAFETY: reserve gave `len` writable bytes at p.
                unsafe { link.recv_payload(s, p, len) }?;
                inb.tx.commit(kind, h.tag, h.arg, len).map_err(Fault::local)
            } else {
                let (mut left, mut k) = (len, kind);
                loop {
                    let (p, n) = inb.tx.reserve(left, false).map_err(Fault::local)?.ok_or_else(|| Fault::local("no room for a credited frame"))?;
                    // SAFETY: reserve gave `n` writable bytes at p.
                    unsafe { link.recv_payload(s, p, n) }?;
                    inb.tx.commit(k, h.tag, h.arg, n).map_err(Fault::local)?;
                    left -= n;
                    k = REC_CONT;
                    if left == 0 {
                        return Ok(());
                    }
                }
            }
        })();
        if let Err(e) = res {
            // Our own accounting says the frame fits; if the ring says
            // otherwise the client broke it. Link errors end the link.
            drop(inb);
            return Err(Fault { why: format!("connection {}: {}", f.local, e.why), ..e });
        }
        let used = inb.tx.produced() - head0;
        debug_assert!(used <= c, "frame of {len} bytes used {used} ring bytes, charged {c}");
        // Bytes of a placed message were credited when it started.
        let early = (len as u64).min(inb.ahead);
        inb.ahead -= early;
        debug_assert!(used + early <= c, "placed frame of {len} bytes used {used} ring bytes, charged {c}");
        inb.charged += c;
        inb.excess += c.saturating_sub(used + early);
        // What the client consumed while the frame came in counts too: a
        // pump or cover that looked for credit meanwhile found `inb` held
        // and left it to us (`Fwd::credit_due`).
        let g = match inb.granted(f.ring) {
            Ok(g) => g,
            Err(e) => {
                drop(inb);
                f.local_fault(&e.to_string());
                return Ok(());
            }
        };
        drop(inb);
        f.client_side().notify();
        self.credit(link, &f, g)
    }

    /// Returns credit up to `g` (what `f`'s peer may have sent in all) if
    /// enough was freed since the last CREDIT: from this receiver thread at
    /// once, never waiting on the link; when the link is busy, the pump
    /// sends it.
    fn credit(&self, link: &Arc<dyn Link>, f: &Fwd, g: u64) -> Result<(), Fault> {
        if g.saturating_sub(f.reported.load(Ordering::Relaxed)) < f.ring / 4 {
            return Ok(());
        }
        let h = Header::control(wire::CREDIT, f.peer_conn.load(Ordering::Relaxed), g, 0).encode();
        match f.send(&**link, &[Frame::bare(h)], Mode::Try) {
            Ok(true) => {
                f.reported.fetch_max(g, Ordering::Relaxed);
                self.flush_later(&**link, f.stream());
                Ok(())
            }
            Ok(false) => {
                f.router_side().force_wake();
                Ok(())
            }
            Err(Stop::Link(why)) => Err(Fault { cause: Cause::Io, why }),
            Err(Stop::Local(why)) => Err(Fault::local(why)),
        }
    }

    /// The link is gone: every connection on it is closed for its client.
    /// What `Link::try_send` could not hand to stream `s`'s socket goes
    /// with the link's control thread.
    pub(super) fn flush_later(&self, link: &dyn Link, s: usize) {
        if link.needs_flush(s) {
            self.ctrl_cv.notify_one();
        }
    }

    pub(super) fn kill(&self, cause: Cause, why: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, waiting) = {
            let mut i = self.inner.lock().unwrap();
            (i.link.take(), std::mem::take(&mut i.waiting))
        };
        let conns: Vec<Arc<Fwd>> = self.conns.lock().unwrap().drain().map(|(_, f)| f).collect();
        if link.is_some() || !conns.is_empty() {
            limited!(warn, "link-down", "", "{} is down: {why}; closing its {} connection(s)", self.name, conns.len());
        } else {
            limited!(warn, "link-down", "", "{}: {why}", self.name);
        }
        let msg = format!("{}: {why}", self.name);
        for (f, _, _) in waiting {
            f.refuse(ErrorCode::Unreachable, &msg);
        }
        for f in conns {
            f.refuse(ErrorCode::Unreachable, &msg);
            f.peer_gone();
        }
        if let Some(l) = &link {
            l.shutdown();
        }
        // Taking the lock first: a thread that saw `dead` false and is
        // about to wait gets the wake-up.
        drop(self.ctrl.lock().unwrap());
        self.ctrl_cv.notify_all();
        self.ping_cv.notify_all();
        if let (Some(r), Some(a)) = (self.remote.upgrade(), self.addr) {
            let mut out = r.out.lock().unwrap();
            if out.get(&a).is_some_and(|p| std::ptr::eq(&**p, self)) {
                out.remove(&a);
            }
        }
        if link.is_some() {
            if let Some(r) = self.remote.upgrade() {
                r.links.fetch_sub(1, Ordering::Relaxed);
                r.counters.drops[cause as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
