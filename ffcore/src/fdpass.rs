//! Frames with file descriptors over a Unix stream socket (SCM_RIGHTS).
//!
//! A sender writes a whole frame with one `sendmsg`, descriptors attached to
//! its first byte. The receiver reads the header and body with `recvmsg` and
//! keeps every descriptor that arrives; descriptors are owned (`OwnedFd`) from
//! the moment they are received, so unexpected ones are simply closed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{Error, Result};
use crate::proto::{Header, HEADER_LEN};

/// Most descriptors accepted with one frame.
pub const MAX_FDS: usize = 4;

/// Sends one frame and its descriptors.
pub fn send_frame(sock: BorrowedFd<'_>, frame: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < frame.len() {
        let iov = [IoSlice::new(&frame[sent..])];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() { &cmsg } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, collecting descriptors. Returns false on
/// a clean end of stream before the first byte.
fn recv_exact(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(Error::Io(std::io::Error::from(std::io::ErrorKind::TimedOut))),
            Err(e) => return Err(Error::Io(e.into())),
        };
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for c in msg.cmsgs().map_err(|e| Error::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(rs) = c {
                // SAFETY: the kernel just installed these descriptors in our
                // table; nothing else owns them.
                fds.extend(rs.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        if truncated || fds.len() > MAX_FDS {
            return Err(Error::protocol(format!("more than {MAX_FDS} descriptors with one frame")));
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(Error::protocol("connection closed in the middle of a frame"));
        }
        got += n;
    }
    Ok(true)
}

/// A received frame: its header, body and the descriptors that came with it.
pub type Frame = (Header, Vec<u8>, Vec<OwnedFd>);

/// Receives one frame: `Ok(None)` on a clean end of stream.
pub fn recv_frame(sock: BorrowedFd<'_>) -> Result<Option<Frame>> {
    let raw = sock.as_raw_fd();
    let mut fds = Vec::new();
    let mut hdr = [0u8; HEADER_LEN];
    if !recv_exact(raw, &mut hdr, &mut fds)? {
        return Ok(None);
    }
    let h = Header::decode(&hdr)?;
    let mut body = vec![0u8; h.len];
    if !recv_exact(raw, &mut body, &mut fds)? && h.len > 0 {
        return Err(Error::protocol("connection closed in the middle of a frame"));
    }
    Ok(Some((h, body, fds)))
}
