//! Router-to-router links over TCP: one TCP connection per stream,
//! TCP_NODELAY. Each stream starts with the handshake of [`super::auth`];
//! with a peer secret everything after it is sealed ([`super::seal`]),
//! without one frames are written with one `sendmsg` per batch straight
//! from the connection rings (no staging copy), and big payloads are read
//! straight into them (small ones, and what was read ahead of bigger ones,
//! come through a read-ahead buffer: see [`Staging`]).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Instant;

use super::auth::{self, Authed, Identity, Keys};
use super::seal::{Opener, Sealer};
use super::{Frame, Link, Try, SILENT_AFTER};
use crate::wire::HDR_LEN;

pub struct TcpLink {
    socks: Vec<TcpStream>,
    /// Per stream: the sender's lock, holding bytes of frames accepted by
    /// `try_send` that the socket did not take (they go first).
    send_lock: Vec<Mutex<Sending>>,
    tails: Vec<std::sync::atomic::AtomicBool>,
    /// Per stream: bytes read ahead (only its receiver thread uses it).
    staged: Vec<Mutex<Receiving>>,
    what: String,
}

/// One stream's sending state.
struct Sending {
    tail: Vec<u8>,
    /// With a peer secret: seals what is sent.
    sealer: Option<Sealer>,
}

/// One stream's receiving state.
enum Receiving {
    Clear(Staging),
    Sealed(Box<Opener>),
}

/// Read-ahead for one stream: a frame whose payload is smaller than the
/// buffer comes in one `recv` with the frames after it (its payload then
/// costs a copy out of the buffer, not a second system call: a 4 KiB
/// copy is cheaper than a `recv`). The rest of a payload of [`DIRECT`]
/// bytes or more goes straight from the socket into the ring, with what
/// follows it read ahead in the same call; after a payload as big as the
/// buffer only a header is read ahead, so that a stream of big payloads
/// goes to the rings without a copy.
struct Staging {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last payload was [`STAGING`] bytes or more.
    big: bool,
}

const STAGING: usize = 16 << 10;
/// Payload bytes beyond which the rest of a payload is read in place.
const DIRECT: usize = 4096;

impl Staging {
    fn take(&mut self, dst: *mut u8, n: usize) -> usize {
        let k = n.min(self.end - self.start);
        // SAFETY: the caller's dst is valid for n >= k bytes; the source
        // range is inside buf.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.as_ptr().add(self.start), dst, k) };
        self.start += k;
        k
    }

    /// Reads what the socket has now (at most `max` bytes) into the
    /// buffer, without waiting; true if it got any.
    fn fill_now(&mut self, fd: i32, max: usize) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = (self.buf.len() - self.end).min(max);
        // SAFETY: buf[end..end + room] is ours to write.
        let r = unsafe { libc::recv(fd, self.buf.as_mut_ptr().add(self.end) as *mut libc::c_void, room, libc::MSG_DONTWAIT) };
        if r > 0 {
            self.end += r as usize;
            return Ok(true);
        }
        // End of stream and errors: the blocking read reports them.
        Ok(r == 0)
    }

    /// Reads at least one more byte (at most `max`) into the buffer.
    fn fill(&mut self, fd: i32, max: usize) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = (self.buf.len() - self.end).min(max);
        // SAFETY: buf[end..end + room] is ours to write.
        let n = unsafe { recv_some(fd, self.buf.as_mut_ptr().add(self.end), room)? };
        self.end += n;
        Ok(())
    }

    /// Reads exactly `n` bytes into `dst` and, in the same system calls,
    /// up to `ahead` bytes that follow them into the buffer (which the
    /// caller emptied).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `n` bytes.
    unsafe fn read_direct(&mut self, fd: i32, dst: *mut u8, n: usize, ahead: usize) -> io::Result<()> {
        debug_assert!(self.start == self.end);
        (self.start, self.end) = (0, 0);
        let ahead = ahead.min(self.buf.len());
        let mut got = 0;
        while got < n {
            let mut iov = [
                libc::iovec { iov_base: dst.add(got) as *mut libc::c_void, iov_len: n - got },
                libc::iovec { iov_base: self.buf.as_mut_ptr() as *mut libc::c_void, iov_len: ahead },
            ];
            // The kernel fills the first iovec before the second.
            let r = recv_iov(fd, &mut iov)?;
            if r > n - got {
                self.end = r - (n - got);
                got = n;
            } else {
                got += r;
            }
        }
        Ok(())
    }
}

/// A link whose peer host's kernel acknowledges nothing for this long
/// while what we sent waits for it (PINGs go every 500 ms, so there always
/// is something) is broken ([`peer_host_answers`], checked with every
/// PING). Liveness thus lives in the kernels: a router starved of CPU
/// still answers through its kernel.
///
/// A peer whose router reads nothing from a stream for a while (every core
/// busy; it was also a bug, issue 17) keeps a zero window there: its kernel
/// still answers our kernel's window probes, so that is no dead host.
/// `TCP_USER_TIMEOUT` would end such a stream too (Linux applies it to
/// window probes as well), so it is set to [`SILENT_AFTER`], the bound on a
/// router that reads nothing (hung), and the host check is ours.
pub const PEER_HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Our kernel's word on the peer host: an error when segments we sent wait
/// for an acknowledgement and none came for [`PEER_HOST_TIMEOUT`] (a zero
/// window has nothing in flight: its probes are answered).
pub fn peer_host_answers(s: &TcpStream) -> io::Result<()> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    let ti = unsafe {
        let mut ti: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        if libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti as *mut _ as *mut libc::c_void, &mut len) != 0 {
            return Err(io::Error::last_os_error());
        }
        ti
    };
    if ti.tcpi_unacked > 0 && u128::from(ti.tcpi_last_ack_recv) >= PEER_HOST_TIMEOUT.as_millis() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer host acknowledged nothing for {} ms ({} segments waiting)", ti.tcpi_last_ack_recv, ti.tcpi_unacked),
        ));
    }
    Ok(())
}

fn setsockopt_int(s: &TcpStream, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid socket and a c_int option value on our stack.
    if unsafe { libc::setsockopt(s.as_raw_fd(), level, opt, &v as *const _ as *const libc::c_void, 4) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the options every link socket gets.
pub fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    setsockopt_int(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, PEER_HOST_TIMEOUT.as_secs() as libc::c_int)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, SILENT_AFTER.as_millis() as libc::c_int)?;
    // Kernel autotuning sizes the buffers well on its own; a fixed size
    // (bytes, set with the *FORCE options, so root only) is for experiments.
    if let Some(sz) = std::env::var("FF_LINK_SOCKBUF").ok().and_then(|v| v.parse::<libc::c_int>().ok()) {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            let _ = setsockopt_int(s, libc::SOL_SOCKET, opt, sz);
        }
    }
    Ok(())
}

impl TcpLink {
    /// Wraps handshaken streams (index = stream number) and their keys
    /// (None: the stream stays in clear).
    pub fn new(streams: Vec<(TcpStream, Option<Keys>)>, what: String) -> io::Result<TcpLink> {
        let (mut socks, mut send_lock, mut staged) = (Vec::new(), Vec::new(), Vec::new());
        for (s, keys) in streams {
            s.set_read_timeout(Some(SILENT_AFTER))?;
            s.set_write_timeout(None)?;
            let (sealer, rx) = match keys {
                Some(k) => (Some(Sealer::new(k.tx)), Receiving::Sealed(Box::new(Opener::new(k.rx)))),
                None => (None, Receiving::Clear(Staging { buf: vec![0u8; STAGING].into_boxed_slice(), start: 0, end: 0, big: false })),
            };
            socks.push(s);
            send_lock.push(Mutex::new(Sending { tail: Vec::new(), sealer }));
            staged.push(Mutex::new(rx));
        }
        let tails = socks.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        Ok(TcpLink { socks, send_lock, tails, staged, what })
    }
}

/// Takes exactly `n` opened bytes from a sealed stream, receiving records
/// as needed.
unsafe fn take_sealed(o: &mut Opener, fd: i32, dst: *mut u8, n: usize) -> io::Result<()> {
    let mut got = 0;
    while got < n {
        let k = o.take(dst.add(got), n - got)?;
        got += k;
        if k == 0 {
            o.fill(|b| recv_some(fd, b.as_mut_ptr(), b.len()))?;
        }
    }
    Ok(())
}

/// One `recv` of 1 to `n` bytes (n > 0), retried on EINTR.
unsafe fn recv_some(fd: i32, dst: *mut u8, n: usize) -> io::Result<usize> {
    recv_iov(fd, &mut [libc::iovec { iov_base: dst as *mut libc::c_void, iov_len: n }])
}

/// One `recvmsg` of at least one byte into `iov` (which has room),
/// retried on EINTR.
unsafe fn recv_iov(fd: i32, iov: &mut [libc::iovec]) -> io::Result<usize> {
    loop {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = iov.as_mut_ptr();
        mh.msg_iovlen = iov.len() as _;
        let r = libc::recvmsg(fd, &mut mh, 0);
        if r > 0 {
            return Ok(r as usize);
        }
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer router closed the link"));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing from the peer router for {SILENT_AFTER:?}")))
            }
            _ => return Err(e),
        }
    }
}

fn iovecs(frames: &[Frame]) -> Vec<libc::iovec> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(frames.len() * 2);
    for f in frames {
        iov.push(libc::iovec { iov_base: f.hdr.as_ptr() as *mut libc::c_void, iov_len: HDR_LEN });
        if f.len > 0 {
            iov.push(libc::iovec { iov_base: f.ptr as *mut libc::c_void, iov_len: f.len });
        }
    }
    iov
}

/// Writes everything the iovecs describe (waiting while the socket is full).
unsafe fn send_all(fd: i32, iov: &mut [libc::iovec], flags: i32) -> io::Result<()> {
    let mut i = 0;
    while i < iov.len() && iov[i].iov_len == 0 {
        i += 1;
    }
    while i < iov.len() {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = iov[i..].as_mut_ptr();
        mh.msg_iovlen = (iov.len() - i).min(1024) as _;
        let r = libc::sendmsg(fd, &mh, libc::MSG_NOSIGNAL | flags);
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = r as usize;
        while i < iov.len() && n >= iov[i].iov_len {
            n -= iov[i].iov_len;
            i += 1;
        }
        if n > 0 {
            iov[i].iov_base = (iov[i].iov_base as *mut u8).add(n) as *mut libc::c_void;
            iov[i].iov_len -= n;
        }
    }
    Ok(())
}

impl TcpLink {
    /// Sends the bytes `try_send` left behind (the caller holds the lock).
    fn write_tail(&self, s: usize, fd: i32, tail: &mut Vec<u8>) -> io::Result<()> {
        if tail.is_empty() {
            return Ok(());
        }
        let mut iov = [libc::iovec { iov_base: tail.as_mut_ptr() as *mut libc::c_void, iov_len: tail.len() }];
        // SAFETY: the iovec covers our own buffer.
        unsafe { send_all(fd, &mut iov, 0)? };
        tail.clear();
        self.tails[s].store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

impl Link for TcpLink {
    fn streams(&self) -> usize {
        self.socks.len()
    }

    unsafe fn send(&self, s: usize, frames: &[Frame]) -> io::Result<()> {
        let mut st = self.send_lock[s].lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        let fd = self.socks[s].as_raw_fd();
        self.write_tail(s, fd, &mut st.tail)?;
        match &mut st.sealer {
            None => send_all(fd, &mut iovecs(frames), 0),
            Some(sealer) => {
                let bytes = sealer.seal(frames);
                send_all(fd, &mut [libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() }], 0)
            }
        }
    }

    unsafe fn try_send(&self, s: usize, frames: &[Frame]) -> io::Result<Try> {
        let Ok(mut st) = self.send_lock[s].try_lock() else { return Ok(Try::Busy) };
        let st = &mut *st;
        if !st.tail.is_empty() {
            return Ok(Try::Busy);
        }
        let fd = self.socks[s].as_raw_fd();
        // Sealing uses up record numbers, so sealed bytes are always taken
        // (what the socket does not take now waits in the tail); frames in
        // clear only when some of them go now.
        let (iov, sealed) = match &mut st.sealer {
            Some(sealer) => {
                let bytes = sealer.seal(frames);
                (vec![libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() }], true)
            }
            None => (iovecs(frames), false),
        };
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = iov.as_ptr() as *mut libc::iovec;
        mh.msg_iovlen = iov.len().min(1024) as _;
        let r = libc::sendmsg(fd, &mh, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
        let mut skip = if r >= 0 {
            r as usize
        } else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted if sealed => 0,
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return Ok(Try::Busy),
                _ => return Err(e),
            }
        };
        // Keep the rest, in order, for the next sender (or the flush).
        for v in &iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let p = (v.iov_base as *const u8).add(skip);
            st.tail.extend_from_slice(std::slice::from_raw_parts(p, v.iov_len - skip));
            skip = 0;
        }
        if !st.tail.is_empty() {
            self.tails[s].store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(Try::Sent)
    }

    fn needs_flush(&self, s: usize) -> bool {
        self.tails[s].load(std::sync::atomic::Ordering::Acquire)
    }

    fn flush(&self, s: usize) -> io::Result<()> {
        if !self.needs_flush(s) {
            return Ok(());
        }
        let mut st = self.send_lock[s].lock().unwrap_or_else(|p| p.into_inner());
        self.write_tail(s, self.socks[s].as_raw_fd(), &mut st.tail)
    }

    fn ping(&self, s: usize) -> io::Result<()> {
        peer_host_answers(&self.socks[s])?;
        let ping = Frame::bare(crate::wire::Header::control(crate::wire::PING, 0, 0, 0).encode());
        // SAFETY: no payload.
        unsafe { self.try_send(s, &[ping]) }.map(|_| ())
    }

    fn readable(&self, s: usize) -> bool {
        // Only the stream's receiver thread calls this and takes the lock.
        let Ok(mut rx) = self.staged[s].try_lock() else { return false };
        let fd = self.socks[s].as_raw_fd();
        let st = match &mut *rx {
            Receiving::Clear(st) => st,
            Receiving::Sealed(o) => {
                if o.has_bytes() {
                    return true;
                }
                // SAFETY: recv writes at most b.len() bytes into b.
                let got = o.fill(|b| Ok(unsafe { libc::recv(fd, b.as_mut_ptr() as *mut libc::c_void, b.len(), libc::MSG_DONTWAIT) }.max(0) as usize));
                return matches!(got, Ok(n) if n > 0);
            }
        };
        if st.start < st.end {
            return true;
        }
        // Read ahead what is there (one system call instead of a peek now
        // and a read later): as much as `recv_header` would read.
        let max = if st.big { HDR_LEN } else { STAGING };
        matches!(st.fill_now(fd, max), Ok(true))
    }

    fn recv_header(&self, s: usize) -> io::Result<[u8; HDR_LEN]> {
        let mut rx = self.staged[s].lock().unwrap_or_else(|p| p.into_inner());
        let fd = self.socks[s].as_raw_fd();
        let mut h = [0u8; HDR_LEN];
        let st = match &mut *rx {
            Receiving::Clear(st) => st,
            Receiving::Sealed(o) => {
                // SAFETY: h is valid for HDR_LEN bytes.
                unsafe { take_sealed(o, fd, h.as_mut_ptr(), HDR_LEN)? };
                return Ok(h);
            }
        };
        let mut got = st.take(h.as_mut_ptr(), HDR_LEN);
        while got < HDR_LEN {
            let max = if st.big { HDR_LEN - got } else { STAGING };
            st.fill(fd, max)?;
            // SAFETY: h has HDR_LEN - got bytes left at got.
            got += st.take(unsafe { h.as_mut_ptr().add(got) }, HDR_LEN - got);
        }
        Ok(h)
    }

    unsafe fn recv_payload(&self, s: usize, dst: *mut u8, n: usize) -> io::Result<()> {
        let mut rx = self.staged[s].lock().unwrap_or_else(|p| p.into_inner());
        let fd = self.socks[s].as_raw_fd();
        let st = match &mut *rx {
            Receiving::Clear(st) => st,
            Receiving::Sealed(o) => return take_sealed(o, fd, dst, n),
        };
        st.big = n >= STAGING;
        let mut got = st.take(dst, n);
        while got < n {
            if n - got >= DIRECT {
                let ahead = if st.big { HDR_LEN } else { STAGING };
                return st.read_direct(fd, dst.add(got), n - got, ahead);
            }
            st.fill(fd, STAGING)?;
            got += st.take(dst.add(got), n - got);
        }
        Ok(())
    }

    fn shutdown(&self) {
        for s in &self.socks {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// What the acceptor learns from one incoming stream's handshake.
pub struct Incoming {
    pub peer_id: [u8; 16],
    pub link: u64,
    pub stream: usize,
    pub streams: usize,
    pub sock: TcpStream,
    pub keys: Option<Keys>,
}

/// Dials stream `stream` of link `link` (of `streams`) to `addr` and runs
/// the handshake, all by `deadline`.
pub fn dial_stream(addr: SocketAddr, me: &Identity, link: u64, stream: usize, streams: usize, deadline: Instant) -> io::Result<(TcpStream, Authed)> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no time left to dial"));
    }
    let mut s = TcpStream::connect_timeout(&addr, left)?;
    tune(&s)?;
    let a = auth::dial(&mut s, me, link, stream, streams, deadline)?;
    Ok((s, a))
}

/// Runs the acceptor's side of one stream's handshake, by `deadline`, for
/// a link of at most `max_streams` streams.
pub fn accept_stream(mut s: TcpStream, me: &Identity, max_streams: usize, deadline: Instant) -> io::Result<Incoming> {
    tune(&s)?;
    let (a, h) = auth::accept(&mut s, me, max_streams, deadline)?;
    Ok(Incoming { peer_id: a.peer_id, link: h.link, stream: h.stream, streams: h.streams, sock: s, keys: a.keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    fn ident(id: u8, secret: Option<&[u8]>) -> Identity {
        Identity { router_id: [id; 16], secret: secret.map(Arc::from) }
    }

    /// A one-stream link between two identities, through the handshake.
    fn link_pair(secret: Option<&'static [u8]>) -> (TcpLink, TcpLink) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let t = std::thread::spawn(move || {
            let inc = accept_stream(l.accept().unwrap().0, &ident(2, secret), auth::MAX_STREAMS, deadline).unwrap();
            assert_eq!((inc.peer_id, inc.link, inc.stream, inc.streams), ([1; 16], 77, 0, 1));
            TcpLink::new(vec![(inc.sock, inc.keys)], "a".into()).unwrap()
        });
        let (s, a) = dial_stream(addr, &ident(1, secret), 77, 0, 1, deadline).unwrap();
        assert_eq!(a.peer_id, [2; 16]);
        assert_eq!(a.keys.is_some(), secret.is_some());
        let d = TcpLink::new(vec![(s, a.keys)], "d".into()).unwrap();
        (d, t.join().unwrap())
    }

    fn frames_go_through_in_order_with_payloads(secret: Option<&'static [u8]>) {
        let (d, a) = link_pair(secret);
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let small: Vec<u8> = (0..100u8).collect();
        let sender = std::thread::spawn(move || {
            let frames = [Frame { hdr: [1u8; HDR_LEN], ptr: big.as_ptr(), len: big.len() }, Frame::bare([2u8; HDR_LEN])];
            unsafe { d.send(0, &frames).unwrap() };
            // A non-blocking send goes out too, after the first.
            let f = [Frame { hdr: [3u8; HDR_LEN], ptr: small.as_ptr(), len: small.len() }];
            while unsafe { d.try_send(0, &f).unwrap() } == Try::Busy {
                std::thread::yield_now();
            }
            d.flush(0).unwrap();
            (d, big, small)
        });
        assert_eq!(a.recv_header(0).unwrap(), [1u8; HDR_LEN]);
        let mut got = vec![0u8; 3_000_000];
        // In pieces, as the engine does at the end of a ring.
        unsafe {
            a.recv_payload(0, got.as_mut_ptr(), 1000).unwrap();
            a.recv_payload(0, got.as_mut_ptr().add(1000), got.len() - 1000).unwrap();
        }
        assert_eq!(a.recv_header(0).unwrap(), [2u8; HDR_LEN]);
        assert_eq!(a.recv_header(0).unwrap(), [3u8; HDR_LEN]);
        let mut got_small = [0u8; 100];
        unsafe { a.recv_payload(0, got_small.as_mut_ptr(), 100).unwrap() };
        let (d, big, small) = sender.join().unwrap();
        assert!(got == big && got_small[..] == small[..]);
        d.shutdown();
        assert!(a.recv_header(0).is_err(), "peer gone");
    }

    #[test]
    fn frames_go_through_in_clear_without_a_secret() {
        frames_go_through_in_order_with_payloads(None);
    }

    #[test]
    fn frames_go_through_sealed_with_a_secret() {
        frames_go_through_in_order_with_payloads(Some(b"a secret of sixteen bytes or more"));
    }

    /// Frames of every size class the clear receiver treats apart (read
    /// ahead with others, read in place with read-ahead, read in place
    /// after a big one), back to back, each payload whole or in pieces.
    fn mixed_sizes_arrive_intact(secret: Option<&'static [u8]>) {
        let (d, a) = link_pair(secret);
        let sizes = [0usize, 8, 4095, 4096, 5000, 8, STAGING - 1, STAGING, 4096, 64 << 10, 8, 1 << 20, 0, 4096, 3, STAGING + 7, 8];
        let payload = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|k| (k * 31 + i * 7) as u8).collect() };
        let sender = std::thread::spawn(move || {
            for round in 0..3 {
                for (i, &n) in sizes.iter().enumerate() {
                    let p = payload(i + round, n);
                    let f = [Frame { hdr: [i as u8; HDR_LEN], ptr: p.as_ptr(), len: n }];
                    unsafe { d.send(0, &f).unwrap() };
                }
            }
            d
        });
        for round in 0..3 {
            for (i, &n) in sizes.iter().enumerate() {
                assert_eq!(a.recv_header(0).unwrap(), [i as u8; HDR_LEN], "round {round}, frame {i}");
                let mut got = vec![0u8; n];
                // Every third frame in two pieces, as at the end of a ring.
                let cut = if i % 3 == 0 { n / 3 } else { n };
                unsafe {
                    if cut > 0 {
                        a.recv_payload(0, got.as_mut_ptr(), cut).unwrap();
                    }
                    if n > cut {
                        a.recv_payload(0, got.as_mut_ptr().add(cut), n - cut).unwrap();
                    }
                }
                assert!(got == payload(i + round, n), "round {round}, frame {i} ({n} bytes)");
            }
        }
        sender.join().unwrap().shutdown();
        assert!(a.recv_header(0).is_err(), "peer gone");
    }

    #[test]
    fn mixed_sizes_arrive_intact_in_clear() {
        mixed_sizes_arrive_intact(None);
    }

    #[test]
    fn mixed_sizes_arrive_intact_sealed() {
        mixed_sizes_arrive_intact(Some(b"a secret of sixteen bytes or more"));
    }

    /// Sends 256 KiB frames of `byte` (headers numbered) while the peer
    /// reads nothing, until the socket is full and the link queues the
    /// rest; returns how many frames went.
    fn fill_until_queued(d: &TcpLink, byte: u8) -> usize {
        let payload = vec![byte; 256 << 10];
        let mut sent = 0usize;
        let t0 = Instant::now();
        while !d.needs_flush(0) {
            let f = [Frame { hdr: [(sent % 200) as u8; HDR_LEN], ptr: payload.as_ptr(), len: payload.len() }];
            if unsafe { d.try_send(0, &f).unwrap() } == Try::Sent {
                sent += 1;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "the socket never filled");
        }
        sent
    }

    /// Reads and checks the `sent` frames [`fill_until_queued`] sent.
    fn read_filled(a: &TcpLink, sent: usize, byte: u8) {
        let mut buf = vec![0u8; 256 << 10];
        for i in 0..sent {
            assert_eq!(a.recv_header(0).unwrap(), [(i % 200) as u8; HDR_LEN], "frame {i}");
            unsafe { a.recv_payload(0, buf.as_mut_ptr(), buf.len()).unwrap() };
            assert!(buf.iter().all(|&b| b == byte), "frame {i}");
        }
    }

    #[test]
    fn a_zero_window_for_longer_than_the_host_timeout_is_no_dead_host() {
        // The peer router reads nothing for longer than PEER_HOST_TIMEOUT
        // (its receiver starved or, as in issue 17, stuck) while we have
        // more to send: its kernel keeps a zero window and answers our
        // window probes. The link stays up (before: TCP_USER_TIMEOUT, 5 s,
        // also ended streams with a zero window: ETIMEDOUT), and every
        // byte arrives once the peer reads again.
        let (d, a) = link_pair(None);
        let sent = fill_until_queued(&d, 5);
        // Past the host timeout, with window probes going unrewarded.
        std::thread::sleep(PEER_HOST_TIMEOUT + Duration::from_secs(2));
        peer_host_answers(&d.socks[0]).expect("the peer host answers the window probes");
        let reader = std::thread::spawn(move || read_filled(&a, sent, 5));
        d.flush(0).expect("the link survived the stall");
        reader.join().unwrap();
    }

    #[test]
    fn sealed_try_send_keeps_what_a_full_socket_did_not_take() {
        // The receiver reads nothing until the sender's socket is full:
        // try_send must queue the rest of its sealed bytes (they used up
        // record numbers), and everything still arrives in order.
        let (d, a) = link_pair(Some(b"a secret of sixteen bytes or more"));
        let sent = fill_until_queued(&d, 9);
        assert_eq!(unsafe { d.try_send(0, &[Frame::bare([0; HDR_LEN])]).unwrap() }, Try::Busy, "busy while a tail waits");
        let reader = std::thread::spawn(move || read_filled(&a, sent, 9));
        d.flush(0).unwrap();
        reader.join().unwrap();
    }
}
