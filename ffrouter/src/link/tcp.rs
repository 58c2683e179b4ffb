//! Router-to-router links over TCP: one TCP connection per stream,
//! TCP_NODELAY, frames written with one `sendmsg` per batch straight from
//! the connection rings (no staging copy) and read straight into them.
//!
//! Handshake, per stream (all under [`DIAL_TIMEOUT`]):
//!
//! ```text
//! acceptor -> dialer   GREET  "FFLG" ver:u16 0:u16 router_id[16] challenge[16]
//! dialer -> acceptor   HELLO  "FFLH" ver:u16 stream:u16 streams:u16 0:u16
//!                             router_id[16] link:u64 challenge[16] proof[32]
//! acceptor -> dialer   ACK    "FFLA" ok:u8 0[3] proof[32]
//! ```
//!
//! `link` is the dialer's random id for the link (its streams share it).
//! The proofs are HMACs of the other side's challenge under
//! `--peer-secret` (zero without one; see [`Identity`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use super::{Frame, Identity, Link, Try, DEAD_AFTER, DIAL_TIMEOUT};
use crate::wire::HDR_LEN;

const VERSION: u16 = 1;
const GREET_LEN: usize = 40;
const HELLO_LEN: usize = 84;
const ACK_LEN: usize = 40;
/// Most streams a link may have.
pub const MAX_STREAMS: usize = 64;

pub struct TcpLink {
    socks: Vec<TcpStream>,
    /// Per stream: the sender's lock, holding bytes of frames accepted by
    /// `try_send` that the socket did not take (they go first).
    send_lock: Vec<Mutex<Vec<u8>>>,
    tails: Vec<std::sync::atomic::AtomicBool>,
    /// Per stream: bytes read ahead (only its receiver thread uses it).
    staged: Vec<Mutex<Staging>>,
    what: String,
}

/// Read-ahead for one stream: small frames arrive many per `recv`; big
/// payloads go straight from the socket into the ring, so after a big
/// payload only a header is read ahead.
struct Staging {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
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
}

/// Sets the options every link socket gets.
pub fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    // Kernel autotuning sizes the buffers well on its own; a fixed size
    // (bytes, set with the *FORCE options, so root only) is for experiments.
    if let Some(sz) = std::env::var("FF_LINK_SOCKBUF").ok().and_then(|v| v.parse::<libc::c_int>().ok()) {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: valid socket and a c_int option value on our stack.
            unsafe {
                libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, opt, &sz as *const _ as *const libc::c_void, 4);
            }
        }
    }
    Ok(())
}

impl TcpLink {
    /// Wraps handshaken streams (index = stream number).
    pub fn new(socks: Vec<TcpStream>, what: String) -> io::Result<TcpLink> {
        for s in &socks {
            s.set_read_timeout(Some(DEAD_AFTER))?;
            s.set_write_timeout(None)?;
        }
        let send_lock = socks.iter().map(|_| Mutex::new(Vec::new())).collect();
        let tails = socks.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        let staged = socks
            .iter()
            .map(|_| Mutex::new(Staging { buf: vec![0u8; STAGING].into_boxed_slice(), start: 0, end: 0, big: false }))
            .collect();
        Ok(TcpLink { socks, send_lock, tails, staged, what })
    }
}

fn io_err(e: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads exactly `n` bytes into `dst` (raw: it may be shared memory).
unsafe fn read_raw(fd: i32, dst: *mut u8, n: usize) -> io::Result<()> {
    let mut got = 0;
    while got < n {
        got += recv_some(fd, dst.add(got), n - got)?;
    }
    Ok(())
}

/// One `recv` of 1 to `n` bytes (n > 0), retried on EINTR.
unsafe fn recv_some(fd: i32, dst: *mut u8, n: usize) -> io::Result<usize> {
    loop {
        let r = libc::recv(fd, dst as *mut libc::c_void, n, 0);
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
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing from the peer router for {DEAD_AFTER:?}")))
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
        let mut tail = self.send_lock[s].lock().unwrap_or_else(|p| p.into_inner());
        let fd = self.socks[s].as_raw_fd();
        self.write_tail(s, fd, &mut tail)?;
        let mut iov = iovecs(frames);
        send_all(fd, &mut iov, 0)?;
        Ok(())
    }

    unsafe fn try_send(&self, s: usize, frames: &[Frame]) -> io::Result<Try> {
        let Ok(mut tail) = self.send_lock[s].try_lock() else { return Ok(Try::Busy) };
        if !tail.is_empty() {
            return Ok(Try::Busy);
        }
        let fd = self.socks[s].as_raw_fd();
        let mut iov = iovecs(frames);
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = iov.as_mut_ptr();
        mh.msg_iovlen = iov.len().min(1024) as _;
        let r = libc::sendmsg(fd, &mh, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Try::Busy),
                _ => Err(e),
            };
        }
        let sent = r as usize;
        if sent < total {
            // Keep the rest, in order, for the next sender (or the flush).
            let mut skip = sent;
            for v in &iov {
                if skip >= v.iov_len {
                    skip -= v.iov_len;
                    continue;
                }
                let p = (v.iov_base as *const u8).add(skip);
                tail.extend_from_slice(std::slice::from_raw_parts(p, v.iov_len - skip));
                skip = 0;
            }
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
        let mut tail = self.send_lock[s].lock().unwrap_or_else(|p| p.into_inner());
        self.write_tail(s, self.socks[s].as_raw_fd(), &mut tail)
    }

    fn readable(&self, s: usize) -> bool {
        // Only the stream's receiver thread calls this and takes the lock.
        let Ok(mut st) = self.staged[s].try_lock() else { return false };
        if st.start < st.end {
            return true;
        }
        // Read ahead what is there (one system call instead of a peek now
        // and a read later): as much as `recv_header` would read.
        let max = if st.big { HDR_LEN } else { STAGING };
        matches!(st.fill_now(self.socks[s].as_raw_fd(), max), Ok(true))
    }

    fn recv_header(&self, s: usize) -> io::Result<[u8; HDR_LEN]> {
        let mut st = self.staged[s].lock().unwrap_or_else(|p| p.into_inner());
        let fd = self.socks[s].as_raw_fd();
        let mut h = [0u8; HDR_LEN];
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
        let mut st = self.staged[s].lock().unwrap_or_else(|p| p.into_inner());
        let fd = self.socks[s].as_raw_fd();
        st.big = n >= DIRECT;
        let mut got = st.take(dst, n);
        while got < n {
            if n - got >= DIRECT {
                return read_raw(fd, dst.add(got), n - got);
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
}

/// Dials stream `stream` of link `link` (of `streams`) to `addr`.
/// Returns the socket and the acceptor's router id.
pub fn dial_stream(addr: SocketAddr, me: &Identity, link: u64, stream: usize, streams: usize) -> io::Result<(TcpStream, [u8; 16])> {
    let mut s = TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
    tune(&s)?;
    s.set_read_timeout(Some(DIAL_TIMEOUT))?;
    s.set_write_timeout(Some(DIAL_TIMEOUT))?;
    let mut g = [0u8; GREET_LEN];
    s.read_exact(&mut g)?;
    if &g[0..4] != b"FFLG" || u16::from_le_bytes([g[4], g[5]]) != VERSION {
        return Err(io_err("not a FreeFlow router, or another link version"));
    }
    let peer_id: [u8; 16] = g[8..24].try_into().unwrap();
    let peer_challenge: [u8; 16] = g[24..40].try_into().unwrap();
    let challenge: [u8; 16] = rand::random();
    let mut h = [0u8; HELLO_LEN];
    h[0..4].copy_from_slice(b"FFLH");
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&(stream as u16).to_le_bytes());
    h[8..10].copy_from_slice(&(streams as u16).to_le_bytes());
    h[12..28].copy_from_slice(&me.router_id);
    h[28..36].copy_from_slice(&link.to_le_bytes());
    h[36..52].copy_from_slice(&challenge);
    let proof = me.prove(b"dial", &peer_challenge, &h[6..36]);
    h[52..84].copy_from_slice(&proof);
    s.write_all(&h)?;
    let mut a = [0u8; ACK_LEN];
    s.read_exact(&mut a)?;
    if &a[0..4] != b"FFLA" {
        return Err(io_err("bad link handshake reply"));
    }
    if a[4] != 1 {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the peer router refused the link (--peer-secret differs?)"));
    }
    let proof: [u8; 32] = a[8..40].try_into().unwrap();
    if !me.check(b"acpt", &challenge, &peer_id, &proof) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the peer router does not know our --peer-secret"));
    }
    Ok((s, peer_id))
}

/// Runs the acceptor's side of one stream's handshake.
pub fn accept_stream(mut s: TcpStream, me: &Identity) -> io::Result<Incoming> {
    tune(&s)?;
    s.set_read_timeout(Some(DIAL_TIMEOUT))?;
    s.set_write_timeout(Some(DIAL_TIMEOUT))?;
    let challenge: [u8; 16] = rand::random();
    let mut g = [0u8; GREET_LEN];
    g[0..4].copy_from_slice(b"FFLG");
    g[4..6].copy_from_slice(&VERSION.to_le_bytes());
    g[8..24].copy_from_slice(&me.router_id);
    g[24..40].copy_from_slice(&challenge);
    s.write_all(&g)?;
    let mut h = [0u8; HELLO_LEN];
    s.read_exact(&mut h)?;
    if &h[0..4] != b"FFLH" || u16::from_le_bytes([h[4], h[5]]) != VERSION || h[10..12] != [0, 0] {
        return Err(io_err("bad link hello"));
    }
    let stream = u16::from_le_bytes([h[6], h[7]]) as usize;
    let streams = u16::from_le_bytes([h[8], h[9]]) as usize;
    if streams == 0 || streams > MAX_STREAMS || stream >= streams {
        return Err(io_err("bad stream numbers in link hello"));
    }
    let peer_id: [u8; 16] = h[12..28].try_into().unwrap();
    let link = u64::from_le_bytes(h[28..36].try_into().unwrap());
    let peer_challenge: [u8; 16] = h[36..52].try_into().unwrap();
    let proof: [u8; 32] = h[52..84].try_into().unwrap();
    let mut a = [0u8; ACK_LEN];
    a[0..4].copy_from_slice(b"FFLA");
    if !me.check(b"dial", &challenge, &h[6..36], &proof) {
        let _ = s.write_all(&a);
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "peer router failed the --peer-secret check"));
    }
    a[4] = 1;
    a[8..40].copy_from_slice(&me.prove(b"acpt", &peer_challenge, &me.router_id));
    s.write_all(&a)?;
    Ok(Incoming { peer_id, link, stream, streams, sock: s })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;

    fn ident(id: u8, secret: Option<&[u8]>) -> Identity {
        Identity { router_id: [id; 16], secret: secret.map(Arc::from) }
    }

    fn pair(dialer: Identity, acceptor: Identity) -> (io::Result<(TcpStream, [u8; 16])>, io::Result<Incoming>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept_stream(s, &acceptor)
        });
        let d = dial_stream(addr, &dialer, 77, 1, 2);
        (d, t.join().unwrap())
    }

    #[test]
    fn handshake_with_and_without_a_secret() {
        let (d, a) = pair(ident(1, None), ident(2, None));
        assert_eq!(d.unwrap().1, [2; 16]);
        let a = a.unwrap();
        assert_eq!((a.peer_id, a.link, a.stream, a.streams), ([1; 16], 77, 1, 2));
        let (d, a) = pair(ident(1, Some(b"k")), ident(2, Some(b"k")));
        assert!(d.is_ok() && a.is_ok());
        let (d, a) = pair(ident(1, Some(b"k")), ident(2, Some(b"other")));
        assert!(d.is_err() && a.is_err(), "different secrets");
        let (d, a) = pair(ident(1, None), ident(2, Some(b"k")));
        assert!(d.is_err() && a.is_err(), "dialer without the secret");
        let (d, a) = pair(ident(1, Some(b"k")), ident(2, None));
        assert!(d.is_err(), "acceptor cannot prove the secret");
        drop(a);
    }

    #[test]
    fn frames_go_through_in_order_with_payloads() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || TcpLink::new(vec![l.accept().unwrap().0], "a".into()).unwrap());
        let d = TcpLink::new(vec![TcpStream::connect(addr).unwrap()], "d".into()).unwrap();
        let a = t.join().unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let sender = std::thread::spawn(move || {
            let h1 = [1u8; HDR_LEN];
            let h2 = [2u8; HDR_LEN];
            let frames = [Frame { hdr: h1, ptr: big.as_ptr(), len: big.len() }, Frame::bare(h2)];
            unsafe { d.send(0, &frames).unwrap() };
            (d, big)
        });
        assert_eq!(a.recv_header(0).unwrap(), [1u8; HDR_LEN]);
        let mut got = vec![0u8; 3_000_000];
        unsafe { a.recv_payload(0, got.as_mut_ptr(), got.len()).unwrap() };
        assert_eq!(a.recv_header(0).unwrap(), [2u8; HDR_LEN]);
        let (d, big) = sender.join().unwrap();
        assert!(got == big);
        d.shutdown();
        assert!(a.recv_header(0).is_err(), "peer gone");
    }
}
