//! What a caller that polls connections from a loop of its own, and sleeps
//! elsewhere (UCX: its progress, and `poll` on an event descriptor), needs
//! besides sends and receives: an explicit liveness check, the connection's
//! wake-up words for a [`crate::wake::Waiter`], and whether a poll would
//! find anything to do (the check between announcing a sleep and sleeping);
//! and, for a thread that drives many connections itself, [`wait_any`]:
//! one sleep on all of them.

use super::Conn;
use crate::error::Result;
use crate::ring::ALIGN;
use crate::wake::ConnWords;
use crate::error::Error;
use crate::futex::{self, WAITV_MAX};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sleeps until one of `conns` has something to do, at most `timeout`: for
/// a thread that drives many connections with nonblocking requests
/// ([`Conn::isend`], [`Conn::irecv`], [`Conn::test`]), as a rank's progress
/// thread or NCCL's proxy does, once a pass over them moved nothing.
///
/// [`Conn::wait`]'s protocol on all of them at once: announce the sleep on
/// each connection (their peers, or the router, then wake us), look at each
/// once more ([`Conn::has_events`]) and return at once if one has events;
/// else sleep in one `futex_waitv` on all their wake words (a word woken or
/// changed after it was read ends the sleep at once, so nothing that
/// happened after the look is lost). Returns true when a connection had
/// events (no sleep), false after a sleep (woken, timed out, or a signal):
/// either way, poll them again. No busy-polling, no fixed sleeps; a
/// connection that waits for a same-host peer's credit caps the sleep at
/// 200 µs, as in [`Conn::wait`]. Liveness is the caller's:
/// [`Conn::check_alive`] now and then (the router marks forwarded
/// connections closed itself).
///
/// At most [`WAITV_MAX`] (128) connections per call (the kernel's limit):
/// more is `InvalidArgument`. Needs Linux 5.16 (futex_waitv); an older
/// kernel's error is returned.
pub fn wait_any(conns: &mut [&mut Conn], timeout: Duration) -> Result<bool> {
    if conns.is_empty() || conns.len() > WAITV_MAX {
        return Err(Error::InvalidArgument(format!("wait_any on {} connections (1 to {WAITV_MAX})", conns.len())));
    }
    let mut words: Vec<(*const AtomicU32, u32)> = Vec::with_capacity(conns.len());
    let mut timeout = timeout;
    for c in conns.iter() {
        let me = c.lay.side(c.side);
        words.push((me.wake as *const AtomicU32, me.prepare_sleep()));
    }
    let cancel = |conns: &mut [&mut Conn]| {
        for c in conns.iter() {
            c.lay.side(c.side).cancel_sleep();
        }
    };
    for c in conns.iter_mut() {
        if c.has_events() {
            cancel(conns);
            return Ok(true);
        }
        if c.credit_blocked {
            timeout = timeout.min(Duration::from_micros(200));
        }
    }
    // SAFETY: every word lies in the control page of a connection borrowed
    // for the call (mapped while it lives); at most WAITV_MAX words.
    let res = unsafe { futex::wait_any_timeout(&words, timeout) };
    cancel(conns);
    res.map(|_| false).map_err(Error::Io)
}

impl Conn {
    /// Is the peer still there? Checks its liveness lock now (one system
    /// call), as [`Conn::wait`] does every few milliseconds: a peer that
    /// died while no router could say so (the router is down, or it was
    /// the router itself playing the other side) is then marked closed,
    /// which wakes us and fails what waits on it. False once the peer
    /// closed or died.
    pub fn check_alive(&mut self) -> bool {
        self.check_peer_alive();
        !self.peer().is_closed()
    }

    /// This side's wake-up words, mapped on their own (see [`crate::wake`]).
    pub fn wake_words(&self) -> Result<Arc<ConnWords>> {
        ConnWords::map(self._mem.fd(), self.side)
    }

    /// Would polling this connection find something to do now: input in
    /// the ring, the peer closed or gone, a broken connection, queued sends
    /// that now have room, sends by reference the receiver has copied? Ask
    /// after announcing a sleep ([`ConnWords::arm`]) and sleep only on
    /// false. It may say true when a poll then finds nothing it can take
    /// (never the reverse).
    pub fn has_events(&mut self) -> bool {
        if self.broken.is_some() || self.peer().is_closed() || self.rx.has_data() {
            return true;
        }
        // A fragment goes into the ring once a header and a cache line of
        // payload fit (twice that covers padding at the ring's end).
        if !self.sends.is_empty() && self.stream_free() >= 4 * ALIGN {
            return true;
        }
        let copied = self.peer().shadow_done.load(Ordering::Acquire);
        self.awaiting.front().is_some_and(|&(_, _, seq, _)| copied >= seq)
    }

    /// Bytes free in our outgoing ring (a whole message of `max` bytes
    /// fits when this is at least twice its record; see
    /// [`Conn::max_whole`]). A corrupt ring reads as all free: a send then
    /// reports it.
    pub fn tx_free(&mut self) -> usize {
        self.tx.free().unwrap_or(usize::MAX)
    }

    /// Bytes the queued sends may write into our outgoing ring now: what
    /// is free within its window (see [`super::share`]). A corrupt ring
    /// reads as all free, as in [`Conn::tx_free`].
    fn stream_free(&mut self) -> usize {
        self.set_window();
        self.tx.stream_free().unwrap_or(usize::MAX)
    }

    /// Takes up the window [`super::share`] gives our ring now.
    pub(super) fn set_window(&mut self) {
        if let Some(m) = &mut self.share {
            self.tx.set_window(m.window());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Conn;
    use crate::ring;
    use crate::shm::SharedMem;
    use crate::wake::Waiter;
    use std::time::Duration;

    fn pair() -> (Conn, Conn) {
        let mem = SharedMem::create("test", ring::file_len(4096)).unwrap();
        ring::init(&mem, 4096);
        let fd = mem.fd().try_clone_to_owned().unwrap();
        let b = Conn::new(1, 1, SharedMem::from_fd(fd, ring::file_len(4096)).unwrap(), 4096, None, None).unwrap();
        let a = Conn::new(1, 0, mem, 4096, None, None).unwrap();
        (a, b)
    }

    fn readable(w: &Waiter, ms: i32) -> bool {
        let mut p = libc::pollfd { fd: w.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on our stack.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn a_message_wakes_a_sleeping_receiver_and_events_say_so() {
        let (mut a, mut b) = pair();
        let words = b.wake_words().unwrap();
        let mut w = Waiter::new().unwrap();
        let ww = words.arm();
        assert!(!b.has_events(), "nothing to do yet");
        w.arm(vec![ww]).unwrap();
        assert!(!readable(&w, 50));
        let sent = a.try_send_with(3, 5, |p| {
            unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p, 5) };
            5
        });
        assert_eq!(sent.unwrap(), Some(5));
        assert!(readable(&w, 5000), "the send woke the receiver's descriptor");
        assert!(b.has_events());
        assert!(b.poll_whole(|t, _, n| assert_eq!((t, n), (3, 5))).unwrap());
        assert!(!b.has_events(), "taken");
    }

    #[test]
    fn room_in_a_full_ring_wakes_the_sender() {
        let (mut a, mut b) = pair();
        // Fill a's ring, then queue a send that waits for room.
        while a.try_send_with(1, 900, |_| 900).unwrap().is_some() {}
        let big = vec![7u8; 3000];
        let r = unsafe { a.isend(big.as_ptr(), big.len(), 2).unwrap() };
        let words = a.wake_words().unwrap();
        let mut w = Waiter::new().unwrap();
        let ww = words.arm();
        assert!(!a.has_events(), "a full ring is nothing to do");
        w.arm(vec![ww]).unwrap();
        assert!(b.poll_whole(|_, _, _| {}).unwrap());
        assert!(readable(&w, 5000), "the receiver's consumption woke the sender");
        assert!(a.has_events());
        while b.poll_whole(|_, _, _| {}).unwrap() {}
        let mut buf = vec![0u8; 3000];
        let rr = unsafe { b.irecv(buf.as_mut_ptr(), buf.len(), 2).unwrap() };
        loop {
            a.progress();
            if let Some(n) = b.test(rr).unwrap() {
                assert_eq!(n, 3000);
                break;
            }
        }
        assert_eq!(a.wait(r, Some(Duration::from_secs(5))).unwrap(), 3000);
    }

    #[test]
    fn a_closed_peer_is_an_event_and_check_alive_sees_a_dropped_peer() {
        let (mut a, b) = pair();
        assert!(a.check_alive());
        let words = a.wake_words().unwrap();
        let mut w = Waiter::new().unwrap();
        let ww = words.arm();
        assert!(!a.has_events());
        w.arm(vec![ww]).unwrap();
        drop(b); // closes its side (and drops its liveness lock)
        assert!(readable(&w, 5000), "a closing peer wakes us");
        assert!(a.has_events());
        assert!(!a.check_alive());
    }

    #[test]
    fn wait_any_sleeps_on_many_connections_until_one_has_something() {
        use super::wait_any;
        use std::sync::atomic::Ordering;
        let (mut tx, mut rx): (Vec<Conn>, Vec<Conn>) = (0..5).map(|_| pair()).unzip();
        let asleep = |rx: &[Conn]| rx.iter().filter(|c| c.lay.side(c.side).waiting.load(Ordering::SeqCst) != 0).count();
        // Nothing to do: it sleeps (here until the timeout), and withdraws
        // its announcements after.
        assert!(!wait_any(&mut rx.iter_mut().collect::<Vec<_>>(), Duration::from_millis(5)).unwrap());
        assert_eq!(asleep(&rx), 0);
        // A message on the fourth, sent while it sleeps, wakes it.
        let mut t3 = tx.remove(3);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let sent = t3.try_send_with(4, 5, |p| {
                unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p, 5) };
                5
            });
            assert_eq!(sent.unwrap(), Some(5));
            t3
        });
        while !rx[3].has_events() {
            wait_any(&mut rx.iter_mut().collect::<Vec<_>>(), Duration::from_secs(60)).unwrap();
        }
        assert_eq!(asleep(&rx), 0);
        tx.insert(3, sender.join().unwrap());
        // Something there already: no sleep at all.
        assert!(wait_any(&mut rx.iter_mut().collect::<Vec<_>>(), Duration::from_secs(60)).unwrap());
        assert!(rx[3].poll_whole(|t, p, n| {
            assert_eq!((t, n), (4, 5));
            assert_eq!(unsafe { std::slice::from_raw_parts(p, n) }, b"hello");
        })
        .unwrap());
        // A closing peer is something too.
        drop(tx.remove(1));
        while !rx[1].has_events() {
            wait_any(&mut rx.iter_mut().collect::<Vec<_>>(), Duration::from_secs(60)).unwrap();
        }
        // One futex_waitv call covers at most 128 words.
        let (_t, mut many): (Vec<Conn>, Vec<Conn>) = (0..129).map(|_| pair()).unzip();
        assert!(matches!(wait_any(&mut many.iter_mut().collect::<Vec<_>>(), Duration::from_millis(1)), Err(crate::Error::InvalidArgument(_))));
        assert!(matches!(wait_any(&mut [], Duration::from_millis(1)), Err(crate::Error::InvalidArgument(_))));
    }
}
