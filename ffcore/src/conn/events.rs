//! What a caller that polls connections from a loop of its own, and sleeps
//! elsewhere (UCX: its progress, and `poll` on an event descriptor), needs
//! besides sends and receives: an explicit liveness check, the connection's
//! wake-up words for a [`crate::wake::Waiter`], and whether a poll would
//! find anything to do (the check between announcing a sleep and sleeping).

use super::Conn;
use crate::error::Result;
use crate::ring::ALIGN;
use crate::wake::ConnWords;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
        if !self.sends.is_empty() && self.tx_free() >= 4 * ALIGN {
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
}
