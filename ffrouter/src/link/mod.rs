//! Links between routers: a few ordered streams of frames ([`crate::wire`])
//! between two routers. [`tcp`] runs everywhere; [`rdma`] runs the same
//! frames over RC queue pairs where an RDMA device exists. The forwarding
//! engine ([`crate::remote`]) only sees the [`Link`] trait.
//!
//! Per stream, one thread receives (headers, then payloads straight into the
//! destination ring) and any number of threads send (each call to
//! [`Link::send`] goes out as one unit, in call order).

pub mod auth;
pub mod rdma;
pub mod seal;
pub mod tcp;
pub mod verbs;

pub use auth::Identity;

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ffcore::shm::SharedMem;

use crate::wire::HDR_LEN;

/// A link is dead when the peer's *host* stops answering: over TCP its
/// kernel acknowledges nothing we sent (PINGs, data) for
/// [`tcp::PEER_HOST_TIMEOUT`] (our kernel's acknowledgement times, which no
/// scheduling delay of either router holds up: [`tcp::peer_host_answers`]),
/// or when it closes; over RDMA its NIC, for the NIC's retransmission
/// budget ([`rdma::NIC_RETRY_BUDGET`]: an operation, a PING at least,
/// fails). A peer router whose host answers but that sends nothing, not
/// even a PING (every [`PING_EVERY`]), for this long is taken for hung, on
/// either transport; so is one that reads nothing from a TCP stream for
/// this long (a zero window: `TCP_USER_TIMEOUT`). Long, so that a router
/// starved of CPU (every core busy, or stopped for seconds) or a fabric
/// quiet for seconds (soft-RoCE retransmitting) is never taken for dead.
pub const SILENT_AFTER: Duration = Duration::from_secs(30);
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// Bound on dialing a peer router, handshakes of all streams included.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on an incoming stream's handshake: a peer on the same network
/// needs milliseconds; a slot held longer is an attack or a dead peer.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(1);

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

    /// A whole frame in `bytes` (a header and its payload, as
    /// `wire::control_frame` makes them); the payload is borrowed, so
    /// `bytes` must outlive the send.
    pub fn of(bytes: &[u8]) -> Frame {
        let (hdr, payload) = bytes.split_at(HDR_LEN);
        Frame { hdr: hdr.try_into().unwrap(), ptr: payload.as_ptr(), len: payload.len() }
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

    /// The largest payload a frame may have when its bytes lie in memory
    /// not given to [`Link::register`] (RDMA copies those into its staging
    /// buffer). No limit by default.
    fn unregistered_max(&self) -> usize {
        usize::MAX
    }

    /// How long one message may take to reach the peer router before the
    /// transport itself gives up on the link (RDMA: the operation timeout,
    /// past the NIC's retransmissions); zero where the transport bounds it
    /// otherwise (TCP: the peer's kernel acknowledges within milliseconds
    /// or the link breaks). A connect's answer is waited for this long
    /// twice (there and back) on top of `CONNECT_TIMEOUT`.
    fn op_timeout(&self) -> Duration {
        Duration::ZERO
    }

    /// Like [`Link::send`], but may return before the peer router has
    /// finished reading the frames' payloads (RDMA: the peer READs big
    /// payloads from our memory): returns a ticket, and the payload bytes
    /// must stay as they are until [`Link::reads_done`] says so for it (0:
    /// nothing is read later). Lets a sender keep many payloads in flight.
    ///
    /// # Safety
    /// Every frame's `ptr` must be valid for reads of `len` bytes until
    /// `reads_done` is true for the returned ticket (or the link is broken).
    unsafe fn send_unacked(&self, s: usize, frames: &[Frame]) -> io::Result<u64> {
        self.send(s, frames).map(|_| 0)
    }

    /// Has the peer finished reading every payload sent on stream `s` up to
    /// `ticket` (from [`Link::send_unacked`])? Waits at most `wait`. Fails
    /// once the link is broken, and breaks it when the peer makes no
    /// progress for the transport's operation timeout.
    fn reads_done(&self, _s: usize, _ticket: u64, _wait: Duration) -> io::Result<bool> {
        Ok(true)
    }

    /// The next frame header on stream `s`. Only one thread receives on a
    /// stream. Fails with `TimedOut` when nothing at all arrived for the
    /// silence limit ([`SILENT_AFTER`]), and once the link is broken.
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

    /// Tells the peer on stream `s` that this router is alive, without
    /// waiting behind frames being sent there (the peer declares a stream
    /// dead after its silence limit without anything from us). By default a
    /// PING frame through [`Link::try_send`]; a stream busy sending skips
    /// it, its frames show we live.
    fn ping(&self, s: usize) -> io::Result<()> {
        let ping = Frame::bare(crate::wire::Header::control(crate::wire::PING, 0, 0, 0).encode());
        // SAFETY: no payload.
        unsafe { self.try_send(s, &[ping]) }.map(|_| ())
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

    /// Makes the parts `spans` (byte ranges) of a connection file usable
    /// for zero-copy transfers: RDMA registers each with the NIC on its
    /// own, so that each can be let go of alone ([`Link::unpin`]). Nothing
    /// to do for TCP.
    fn register(&self, _mem: &Arc<SharedMem>, _spans: &[Range<usize>]) -> io::Result<()> {
        Ok(())
    }

    /// Undoes [`Link::register`].
    fn deregister(&self, _mem: &SharedMem) {}

    /// Lets go of the registered part `span` of `mem` for a while, so that
    /// its pages can be punched out of the file (an idle ring, trimmed):
    /// the NIC keeps the pages it was given, so they must be deregistered
    /// first. The next transfer from or into the part registers it again
    /// (on fresh pages). The caller guarantees that no transfer uses the
    /// part meanwhile: the ring is empty, every READ of its bytes acked,
    /// and its writer kept out. False: not now (it is being registered, or
    /// the NIC would not let go), leave the pages alone.
    fn unpin(&self, _mem: &SharedMem, _span: Range<usize>) -> bool {
        true
    }

    /// Bytes of connection files registered now ([`Link::register`], less
    /// what [`Link::unpin`] let go of and nothing registered again since).
    fn pinned_bytes(&self) -> usize {
        0
    }

    /// Makes a client's shadow region usable for zero-copy transfers for as
    /// long as it lives: RDMA registers it with the NIC on first use (the
    /// peer router READs big payloads straight out of it, and our READs
    /// land straight in it) and deregisters it once the last reference to
    /// `mem` is gone. Whoever sends from or receives into the region keeps
    /// a reference until the peer is done with the bytes (the forwarding
    /// engine's `settle`).
    /// False: its bytes are copied (TCP always moves bytes through the
    /// socket; or the NIC refused to register it).
    fn register_region(&self, _mem: &Arc<SharedMem>) -> bool {
        false
    }

    /// Does [`Link::register`] pin the memory's pages (an RDMA NIC keeps
    /// the pages it was given, whatever the file does later), so that a
    /// part must be [`Link::unpin`]ned before its pages are punched?
    fn pins_memory(&self) -> bool {
        false
    }
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

/// Which transport carries links, chosen at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Rdma,
    /// RDMA on [`verbs::FakeVerbs`] (one in-process fabric) whose
    /// operations complete after `delay_ms`, whose queue pairs and
    /// registrations each take `setup_ms` to make, and that moves `kb_s`
    /// KB/s (0: no limit): tests only.
    #[cfg(test)]
    FakeRdma { delay_ms: u64, setup_ms: u64, kb_s: u64 },
}

/// `--peer-transport auto|tcp|rdma`: picks RDMA when asked for, or with
/// `auto` when an RDMA device serves the router's address; TCP otherwise,
/// saying why. Links with a peer secret run over TCP only: RDMA frames are
/// not sealed yet. With RDMA, also the device, port and GID to use.
pub fn select(want: &str, secret: bool, dev: &rdma::Want) -> Result<(Transport, Option<rdma::gid::Choice>), String> {
    match want {
        "tcp" => {
            log::info!("router-to-router transport: TCP (--peer-transport tcp)");
            Ok((Transport::Tcp, None))
        }
        "rdma" if secret => Err("--peer-transport rdma: links over RDMA are not authenticated frame by frame yet; \
            use --peer-transport tcp with --peer-secret-file, or --insecure-no-peer-secret on a fabric only routers reach"
            .into()),
        "rdma" | "auto" => match rdma::probe(dev) {
            Ok(c) if secret => {
                log::info!("router-to-router transport: TCP, although {} exists (links with a peer secret are sealed, which RDMA links are not yet)", c.device);
                Ok((Transport::Tcp, None))
            }
            Ok(c) => {
                log::info!("router-to-router transport: RDMA on {c}");
                Ok((Transport::Rdma, Some(c)))
            }
            Err(rdma::NoDevice::None(why)) if want == "auto" => {
                log::info!("no RDMA device ({why}): using TCP between routers");
                Ok((Transport::Tcp, None))
            }
            Err(rdma::NoDevice::NoMatch(why)) if want == "auto" => {
                log::warn!("RDMA devices exist, but {why}: using TCP between routers");
                Ok((Transport::Tcp, None))
            }
            Err(rdma::NoDevice::None(why)) => Err(format!("--peer-transport rdma: no RDMA device ({why})")),
            Err(rdma::NoDevice::NoMatch(why)) => Err(format!("--peer-transport rdma: {why}")),
        },
        other => Err(format!("--peer-transport {other}: expected auto, tcp or rdma")),
    }
}

/// The address in logs.
pub fn peer_name(a: &SocketAddr) -> String {
    a.to_string()
}
