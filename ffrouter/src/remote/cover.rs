//! Request/response: a receiver thread that delivered to a client *covers*
//! that client's connections for a reply window, returning their credit and
//! sending what the client answers itself, so a ping-pong between hosts
//! wakes no pump (docs/many-hosts.md, "Request/response").

use super::*;

/// One look at every covered connection: returns the credit its client
/// freed and sends what its client wrote (on the connection's own link),
/// never waiting on a link. Connections that need their pump, or went
/// quiet, leave the cover. A failed send kills that link (the receiver of
/// a killed link then finds it shut and stops).
pub(super) fn pass(hot: &mut Vec<Cover>, last_pass: &mut Instant) {
    let now = Instant::now();
    *last_pass = now;
    hot.retain_mut(|c| {
        let (f, link) = (&c.f, &*c.link);
        if c.peer.dead.load(Ordering::Acquire)
            || f.peer_closed.load(Ordering::Acquire)
            || f.local_fault.load(Ordering::Acquire)
            || f.client_side().is_closed()
        {
            return false;
        }
        // Busy: its pump is forwarding.
        let Ok(mut out) = f.out.try_lock() else { return false };
        let keep = 'k: {
            if let Some(g) = f.credit_due() {
                let h = Header::control(wire::CREDIT, f.peer_conn.load(Ordering::Relaxed), g, 0).encode();
                match f.send(link, &[Frame::bare(h)], Mode::Try) {
                    Ok(true) => f.reported.store(g, Ordering::Relaxed),
                    Ok(false) => break 'k false,
                    Err(Stop::Link(e)) | Err(Stop::Local(e)) => {
                        c.peer.kill(Cause::Io, &e);
                        break 'k false;
                    }
                }
            }
            match f.forward(&mut out, link, Mode::Try, Quantum::All) {
                Ok(Moved::Some) => {
                    c.last = now;
                    true
                }
                Ok(Moved::Nothing) => now.duration_since(c.last) < c.window,
                Ok(Moved::Blocked | Moved::Partly) => false,
                Err(Stop::Link(e)) => {
                    c.peer.kill(Cause::Io, &e);
                    false
                }
                Err(Stop::Local(e)) => {
                    drop(out);
                    f.local_fault(&e);
                    false
                }
            }
        };
        c.peer.flush_later(link, f.stream());
        keep
    });
}

/// Traffic on connection `conn`: if it is covered, it and its client's
/// other covered connections stay covered for another reply window, which
/// follows the gap since the client's last traffic ([`polite::next_window`]).
pub(super) fn refresh(hot: &mut [Cover], conn: u64) -> bool {
    let Some(me) = hot.iter().find(|c| c.f.local == conn) else { return false };
    let (client, window, mut last) = (me.f.client, me.window, me.last);
    for c in hot.iter().filter(|c| c.f.client == client) {
        last = last.max(c.last);
    }
    keep_covered(hot, client, window, last);
    true
}

/// Traffic for `client` now, its previous traffic at `last` and its reply
/// window `window` until now: its covered connections stay covered for
/// the next window ([`polite::next_window`] of the gap).
pub(super) fn keep_covered(hot: &mut [Cover], client: u64, window: Duration, last: Instant) {
    let now = Instant::now();
    let w = polite::next_window(window, now.saturating_duration_since(last), reply_window(), reply_max());
    for c in hot.iter_mut().filter(|c| c.f.client == client) {
        c.last = now;
        c.window = w;
    }
}

/// A connection a receiver thread serves in place of its pump (see
/// [`Peer::receive`]). While covered, the pump sleeps without announcing it
/// (clients do not wake it). A cover that ends quiet hands the pump back
/// asleep, its sleep announced, and wakes it only if it has something to
/// do; one that ends busy wakes it.
pub(super) struct Cover {
    pub(super) f: Arc<Fwd>,
    /// The connection's own router link (maybe not the receiver's).
    peer: Arc<Peer>,
    link: Arc<dyn Link>,
    /// Last traffic either way.
    last: Instant,
    /// How long it stays covered without traffic ([`polite::next_window`]).
    window: Duration,
}

/// The pace of a connection's conversation, kept between covers.
#[derive(Clone, Copy)]
pub(super) struct Pace {
    /// The last traffic of its last cover.
    pub(super) last: Option<Instant>,
    /// That cover's reply window.
    pub(super) window: Duration,
}

impl Cover {
    /// Covers `f` unless its pump is busy forwarding or its link is not up.
    pub(super) fn take(f: Arc<Fwd>) -> Option<Cover> {
        let (peer, link) = f.route.get()?;
        let (peer, link) = (peer.upgrade()?, link.clone());
        if peer.dead.load(Ordering::Acquire) || f.covered.load(Ordering::Relaxed) || f.out.try_lock().is_err() {
            return None;
        }
        f.covered.store(true, Ordering::SeqCst);
        // Its client need not wake the pump while we serve it: the drop
        // announces its sleep again and looks for work.
        f.router_side().cancel_sleep();
        let window = f.pace.lock().unwrap().window;
        Some(Cover { f, peer, link, last: Instant::now(), window })
    }
}

impl Drop for Cover {
    fn drop(&mut self) {
        // The next cover's window starts from this one's.
        *self.f.pace.lock().unwrap() = Pace { last: Some(self.last), window: self.window };
        // Ended quiet (no traffic for the whole reply window): the pump's
        // own way to sleep, done for it: announce the sleep (so the
        // client's next write or read wakes it), then look once more.
        // Waking it instead cost two wake-ups of pumps with nothing to do
        // per message of a ping-pong whose answers come after the window,
        // and each of them polled before sleeping again.
        // `covered` goes false first: a pump that sees it still true sleeps
        // on the word it read before, which a wake-up below or the client's
        // notify changes; one that sees it false takes its own way to sleep.
        self.f.covered.store(false, Ordering::SeqCst);
        let me = self.f.router_side();
        me.clear_cpu();
        if self.last.elapsed() < self.window {
            // Ended busy (its link filled, its pump was busy, a yield was
            // lost, the client closed): the pump takes over awake.
            me.force_wake();
            return;
        }
        me.prepare_sleep();
        if self.f.needs_pump(&self.peer) {
            me.force_wake();
        }
    }
}

/// How long a receiver thread spins between two yields while it serves
/// covered connections (see [`Peer::answer`]).
pub(super) fn rx_poll() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(knob(&K, "FF_ROUTER_POLL_US", 3))
}

/// Most connections one receiver thread covers at once.
pub(super) const MAX_COVERED: usize = 8;
/// While frames keep arriving, a receiver still serves its covered
/// connections this often.
pub(super) const PASS_EVERY: Duration = Duration::from_micros(20);

/// How long a receiver thread keeps serving a connection with no traffic
/// (polling the link and the connection's ring), before it hands it back
/// to the pump and blocks on the link: at least this, more for a
/// conversation whose answers take longer ([`polite::next_window`]).
pub(super) fn reply_window() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(knob(&K, "FF_ROUTER_REPLY_US", 50))
}

/// The longest reply window ([`polite::next_window`]).
fn reply_max() -> Duration {
    static K: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(knob(&K, "FF_ROUTER_REPLY_MAX_US", 200)).max(reply_window())
}
