//! Links between routers: a few ordered streams of frames ([`crate::wire`])
//! between two routers. [`tcp`] runs everywhere; [`rdma`] runs the same
//! frames over RC queue pairs where an RDMA device exists. The forwarding
//! engine ([`crate::remote`]) only sees the [`Link`] trait.
//!
//! Per stream, one thread receives (headers, then payloads straight into the
//! destination ring) and any number of threads send (each call to
//! [`Link::send`] goes out as one unit, in call order).

pub mod rdma;
pub mod tcp;
pub mod verbs;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ffcore::shm::SharedMem;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::HDR_LEN;

/// A link stream with nothing received for this long is dead (the peer
/// sends a PING at least every [`PING_EVERY`]).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// Bound on connecting to a peer router and on its handshake.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// One frame to send: a header, and `len` payload bytes at `ptr` (which may
/// point into shared memory: it is only ever read through raw copies).
#[derive(Clone, Copy)]
pub struct Frame {
    pub hdr: [u8; HDR_LEN],
    pub ptr: *const u8,
    pub len: usize,
}

impl Frame {
    pub fn bare(hdr: [u8; HDR_LEN]) -> Frame {
        Frame { hdr, ptr: std::ptr::null(), len: 0 }
    }
}

/// What [`Link::try_send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Try {
    /// The frames are on their way (possibly partly queued inside the link:
    /// see [`Link::needs_flush`]).
    Sent,
    /// Nothing was sent: the link would have had to wait.
    Busy,
}

/// A transport between two routers.
pub trait Link: Send + Sync {
    /// How many independent ordered streams the link has.
    fn streams(&self) -> usize;

    /// Sends `frames` on stream `s`, back to back and in order. Blocks while
    /// the transport has no room (that is the flow control between
    /// routers); fails once the link is broken.
    ///
    /// # Safety
    /// Every frame's `ptr` must be valid for reads of `len` bytes until the
    /// call returns.
    unsafe fn send(&self, s: usize, frames: &[Frame]) -> io::Result<()>;

    /// The next frame header on stream `s`. Only one thread receives on a
    /// stream. Fails with `TimedOut` when nothing at all arrived for
    /// [`DEAD_AFTER`], and once the link is broken.
    fn recv_header(&self, s: usize) -> io::Result<[u8; HDR_LEN]>;

    /// The next `n` payload bytes of the current frame on stream `s`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `n` bytes.
    unsafe fn recv_payload(&self, s: usize, dst: *mut u8, n: usize) -> io::Result<()>;

    /// Like [`Link::send`], but never waits (receiver threads use it, and
    /// must never block on a peer that may be waiting for them): `Busy` if
    /// the frames cannot go now. A link may accept frames it could only
    /// partly hand to the network; the rest goes first on the next send or
    /// [`Link::flush`].
    ///
    /// # Safety
    /// As for [`Link::send`].
    unsafe fn try_send(&self, _s: usize, _frames: &[Frame]) -> io::Result<Try> {
        Ok(Try::Busy)
    }

    /// Is part of a frame accepted by [`Link::try_send`] still waiting?
    fn needs_flush(&self, _s: usize) -> bool {
        false
    }

    /// Sends what [`Link::try_send`] left queued (may wait).
    fn flush(&self, _s: usize) -> io::Result<()> {
        Ok(())
    }

    /// Can [`Link::recv_header`] return without waiting?
    fn readable(&self, _s: usize) -> bool {
        false
    }

    /// Breaks the link: blocked and later calls fail.
    fn shutdown(&self);

    /// For logs: transport and peer.
    fn describe(&self) -> String;

    /// Makes a connection file usable for zero-copy transfers (RDMA
    /// registers it with the NIC). Nothing to do for TCP.
    fn register(&self, _mem: &Arc<SharedMem>) -> io::Result<()> {
        Ok(())
    }

    /// Undoes [`Link::register`].
    fn deregister(&self, _mem: &SharedMem) {}
}

/// Drops `n` payload bytes of the current frame.
pub fn skip_payload(link: &dyn Link, s: usize, mut n: usize) -> io::Result<()> {
    let mut scratch = [0u8; 4096];
    while n > 0 {
        let k = n.min(scratch.len());
        // SAFETY: scratch is valid for k bytes.
        unsafe { link.recv_payload(s, scratch.as_mut_ptr(), k)? };
        n -= k;
    }
    Ok(())
}

/// Who this router is to its peers.
#[derive(Clone)]
pub struct Identity {
    pub router_id: [u8; 16],
    /// `--peer-secret`: both sides prove they know it (HMAC-SHA256 over the
    /// other side's random challenge) before a link carries anything.
    pub secret: Option<Arc<[u8]>>,
}

impl Identity {
    /// The proof for a challenge; all zero without a secret.
    pub fn prove(&self, role: &[u8], challenge: &[u8; 16], extra: &[u8]) -> [u8; 32] {
        let Some(secret) = &self.secret else { return [0; 32] };
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        m.update(b"freeflow-link-v1/");
        m.update(role);
        m.update(challenge);
        m.update(extra);
        m.finalize().into_bytes().into()
    }

    /// Checks a peer's proof (constant time).
    pub fn check(&self, role: &[u8], challenge: &[u8; 16], extra: &[u8], proof: &[u8; 32]) -> bool {
        let Some(secret) = &self.secret else { return true };
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        m.update(b"freeflow-link-v1/");
        m.update(role);
        m.update(challenge);
        m.update(extra);
        m.verify_slice(proof).is_ok()
    }
}

/// Which transport carries links, chosen at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Rdma,
    /// RDMA on [`verbs::FakeVerbs`] (one in-process fabric): tests only.
    #[cfg(test)]
    FakeRdma,
}

/// `--peer-transport auto|tcp|rdma`: picks RDMA when asked for, or with
/// `auto` when an RDMA device exists; TCP otherwise, saying why.
pub fn select(want: &str) -> Result<Transport, String> {
    match want {
        "tcp" => {
            log::info!("router-to-router transport: TCP (--peer-transport tcp)");
            Ok(Transport::Tcp)
        }
        "rdma" | "auto" => match rdma::probe() {
            Ok(dev) => {
                log::info!("router-to-router transport: RDMA on {dev}");
                Ok(Transport::Rdma)
            }
            Err(why) if want == "auto" => {
                log::info!("no RDMA device ({why}): using TCP between routers");
                Ok(Transport::Tcp)
            }
            Err(why) => Err(format!("--peer-transport rdma: no RDMA device ({why})")),
        },
        other => Err(format!("--peer-transport {other}: expected auto, tcp or rdma")),
    }
}

/// The address in logs.
pub fn peer_name(a: &SocketAddr) -> String {
    a.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_need_the_same_secret() {
        let a = Identity { router_id: [1; 16], secret: Some(Arc::from(&b"s3cret"[..])) };
        let b = Identity { router_id: [2; 16], secret: Some(Arc::from(&b"s3cret"[..])) };
        let c = Identity { router_id: [3; 16], secret: Some(Arc::from(&b"other"[..])) };
        let none = Identity { router_id: [4; 16], secret: None };
        let ch = [9u8; 16];
        let p = a.prove(b"dial", &ch, b"x");
        assert!(b.check(b"dial", &ch, b"x", &p));
        assert!(!b.check(b"acpt", &ch, b"x", &p), "roles differ");
        assert!(!b.check(b"dial", &[8; 16], b"x", &p), "challenge differs");
        assert!(!c.check(b"dial", &ch, b"x", &p), "secret differs");
        assert!(!a.check(b"dial", &ch, b"x", &none.prove(b"dial", &ch, b"x")), "no secret, no proof");
        assert!(none.check(b"dial", &ch, b"x", &[0; 32]), "no secret required");
    }
}
