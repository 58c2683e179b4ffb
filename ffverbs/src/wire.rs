//! What travels on the ffcore connection of a queue pair (ordered, tagged
//! messages; the same scheme as the UCX transport's RMA: requests with
//! their data inline or in a following message, answered in order).
//!
//! | tag | payload | direction |
//! |---|---|---|
//! | `HELLO` | [`Hello`] | connector → acceptor, first message |
//! | `SEND` | [`Hdr`] + data if inline | requester → responder |
//! | `WRITE` | [`Hdr`] (raddr, rkey) + data if inline | requester → responder |
//! | `READ` | [`Hdr`] (raddr, rkey, len) | requester → responder |
//! | `ATOMIC` | [`Hdr`] (raddr, rkey, the ffcore atomic op in `imm`) + value, compare (LE) | requester → responder |
//! | `READ_RESP` | [`Hdr`] (status) + data if inline (an atomic's old value) | responder → requester |
//! | `ACK` | [`Hdr`] (seq: the last request done, status) | responder → requester |
//! | `DATA` | the bytes of the request or response before it (`F_DATA_NEXT`) | either |
//! | `RKEY` | [`Hdr`] (rkey, the registration's range, access) + an ffcore remote key | responder → requester, same host |
//!
//! Between two processes on one host, the responder also answers the first
//! WRITE or READ under a key whose registration is shadow memory with
//! `RKEY`: the requester maps those pages (through the router, as the UCX
//! transport does) and does later WRITEs and READs under that key itself,
//! a copy between the two buffers with no work for the responder, once
//! nothing it posted before is still unanswered (so order holds). It keeps
//! to the registration's range and access (a read-only key for memory the
//! peer may not write), and falls back to messages outside the shared
//! pages or after a deregistration.
//! Every request carries a sequence number; the responder serves them in
//! order and answers each READ, and every other request with an ACK
//! (coalesced: an ACK covers every request up to its number). A status
//! other than 0 is the `ibv_wc_status` the requester's work request
//! completes with; the requester's queue pair then goes to the error state.
//! Everything read from the ring is the peer's: headers are copied out
//! once and checked before use.

pub const HELLO: u32 = 1;
pub const SEND: u32 = 2;
pub const WRITE: u32 = 3;
pub const READ: u32 = 4;
pub const READ_RESP: u32 = 5;
pub const ACK: u32 = 6;
pub const DATA: u32 = 7;
pub const RKEY: u32 = 8;
pub const ATOMIC: u32 = 9;
/// A UD datagram on a datagram link (see [`crate::ud`]).
pub const UD: u32 = 10;

/// The data follows in a `DATA` message (else it is inline, after the header).
pub const F_DATA_NEXT: u32 = 1;
/// The request carries immediate data.
pub const F_IMM: u32 = 2;

fn rd64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub seq: u64,
    pub raddr: u64,
    pub len: u64,
    pub rkey: u32,
    /// As the application wrote it (network order): passed through.
    pub imm: u32,
    pub flags: u32,
    pub status: u32,
}

impl Hdr {
    pub const LEN: usize = 40;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.raddr.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.imm.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.status.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<Hdr> {
        (b.len() >= Self::LEN).then(|| Hdr {
            seq: rd64(b, 0),
            raddr: rd64(b, 8),
            len: rd64(b, 16),
            rkey: rd32(b, 24),
            imm: rd32(b, 28),
            flags: rd32(b, 32),
            status: rd32(b, 36),
        })
    }
}

/// The connector's first message: which of the acceptor's queue pairs it
/// is for, and from which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub src_qpn: u32,
    pub dst_qpn: u32,
}

impl Hello {
    pub const LEN: usize = 8;
    pub fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.src_qpn.to_le_bytes());
        b[4..8].copy_from_slice(&self.dst_qpn.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<Hello> {
        (b.len() >= Self::LEN).then(|| Hello { src_qpn: rd32(b, 0), dst_qpn: rd32(b, 4) })
    }
}

/// What reaches a queue pair's device, as its GID: the router's IPv4
/// address (0: a router that serves its own host only), and the device
/// context's listener (id, nonce). The queue pair number says which of the
/// context's queue pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gid {
    pub ip: [u8; 4],
    pub listener: u32,
    pub nonce: u64,
}

impl Gid {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.ip);
        b[4..8].copy_from_slice(&self.listener.to_le_bytes());
        b[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> Gid {
        Gid { ip: b[0..4].try_into().unwrap(), listener: rd32(b, 4), nonce: rd64(b, 8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let h = Hdr { seq: 7, raddr: 0x1234_5678_9abc, len: 99, rkey: 5, imm: 0xdead_beef, flags: F_IMM, status: 3 };
        let mut b = [0u8; Hdr::LEN];
        h.write(&mut b);
        assert_eq!(Hdr::read(&b), Some(h));
        assert_eq!(Hdr::read(&b[..10]), None);
        let g = Gid { ip: [10, 0, 0, 1], listener: 42, nonce: u64::MAX - 3 };
        assert_eq!(Gid::from_bytes(&g.to_bytes()), g);
        let hello = Hello { src_qpn: 1, dst_qpn: 2 };
        let mut b = [0u8; Hello::LEN];
        hello.write(&mut b);
        assert_eq!(Hello::read(&b), Some(hello));
    }
}
