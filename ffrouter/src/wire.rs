//! What routers say to each other over a link (see [`crate::remote`]).
//!
//! Every stream of a link carries frames: a 32-byte header, then `len`
//! payload bytes. All integers little endian.
//!
//! | bytes  | field | |
//! |--------|-------|---|
//! | 0      | type  | [`DATA`], [`CREDIT`], [`CLOSE`], [`CONNECT`], [`ACCEPT`], [`REFUSE`], [`PING`] |
//! | 1      | kind  | DATA: the ring record kind (FIRST or CONT); else 0 |
//! | 2..4   | zero  | |
//! | 4..8   | len   | payload bytes (DATA: message bytes; CONNECT/ACCEPT/REFUSE: postcard body) |
//! | 8..16  | conn  | the *receiving* router's connection id (0 for PING) |
//! | 16..24 | arg   | DATA: the message's total length; CREDIT: credit granted so far |
//! | 24..28 | tag   | DATA: the message tag |
//! | 28..32 | zero  | |
//!
//! Flow control is end to end per connection, in credits: a router may only
//! send DATA worth [`charge`] while the sum of charges stays within the
//! credit the receiving router granted (its ring size to start with, then
//! more as its client drains the ring). The charge bounds the ring bytes the
//! frame can take at the receiver (header, alignment, padding at the wrap),
//! so a frame that was allowed always fits: the receiving router never waits
//! for ring space and never buffers, and one slow receiver cannot stall the
//! other connections of its stream.
//!
//! Everything received is checked; a frame that breaks the rules is a fault
//! of the peer router, and the link is dropped.

use ffcore::error::ErrorCode;
use ffcore::ring::{record_span, REC_CONT, REC_FIRST};
use serde::{Deserialize, Serialize};

pub const HDR_LEN: usize = 32;

pub const DATA: u8 = 1;
pub const CREDIT: u8 = 2;
pub const CLOSE: u8 = 3;
pub const CONNECT: u8 = 4;
pub const ACCEPT: u8 = 5;
pub const REFUSE: u8 = 6;
pub const PING: u8 = 7;

/// Largest DATA payload in one frame.
pub const MAX_DATA: usize = 1 << 20;
/// Largest control body.
pub const MAX_CONTROL: usize = 4096;
/// Ring bytes a frame may take beyond its payload (two record headers and
/// alignments, and one PAD record of under two cache lines at the wrap).
pub const OVERHEAD: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub ty: u8,
    pub kind: u8,
    pub len: u32,
    pub conn: u64,
    pub arg: u64,
    pub tag: u32,
}

impl Header {
    pub fn data(conn: u64, kind: u32, tag: u32, total: u64, len: usize) -> Header {
        Header { ty: DATA, kind: kind as u8, len: len as u32, conn, arg: total, tag }
    }

    pub fn control(ty: u8, conn: u64, arg: u64, len: usize) -> Header {
        Header { ty, conn, arg, len: len as u32, ..Header::default() }
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.ty;
        b[1] = self.kind;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.conn.to_le_bytes());
        b[16..24].copy_from_slice(&self.arg.to_le_bytes());
        b[24..28].copy_from_slice(&self.tag.to_le_bytes());
        b
    }

    /// Decodes and checks a header from a peer router.
    pub fn decode(b: &[u8; HDR_LEN]) -> Result<Header, String> {
        let h = Header {
            ty: b[0],
            kind: b[1],
            len: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            conn: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            arg: u64::from_le_bytes(b[16..24].try_into().unwrap()),
            tag: u32::from_le_bytes(b[24..28].try_into().unwrap()),
        };
        if b[2..4] != [0, 0] || b[28..32] != [0; 4] {
            return Err("reserved frame bytes are set".into());
        }
        let len = h.len as usize;
        match h.ty {
            DATA => {
                if !matches!(h.kind as u32, REC_FIRST | REC_CONT) {
                    return Err(format!("bad record kind {}", h.kind));
                }
                if len > MAX_DATA {
                    return Err(format!("{len}-byte data frame"));
                }
                if h.kind as u32 == REC_FIRST && (len as u64) > h.arg {
                    return Err("data frame longer than its message".into());
                }
            }
            CONNECT | ACCEPT | REFUSE => {
                if h.kind != 0 || len > MAX_CONTROL {
                    return Err(format!("bad control frame (type {}, {len} bytes)", h.ty));
                }
            }
            CREDIT | CLOSE | PING => {
                if h.kind != 0 || len != 0 {
                    return Err(format!("frame type {} with a payload", h.ty));
                }
            }
            t => return Err(format!("unknown frame type {t}")),
        }
        Ok(h)
    }
}

/// The credit a DATA frame costs: at least the ring bytes it can take at a
/// receiver whose whole-record limit is `whole_max`. A whole message (one
/// FIRST record with all its bytes) is kept whole in the receiver's ring,
/// which may cost a pad up to its own size at the wrap.
pub fn charge(kind: u32, total: u64, len: usize, whole_max: usize) -> u64 {
    if is_whole(kind, total, len, whole_max) {
        2 * record_span(len) as u64 + OVERHEAD
    } else {
        len as u64 + OVERHEAD
    }
}

pub fn is_whole(kind: u32, total: u64, len: usize, whole_max: usize) -> bool {
    kind == REC_FIRST && total == len as u64 && len <= whole_max
}

/// The largest whole record a ring of `ring_size` bytes takes
/// ([`ffcore::ring::Tx::reserve`] with `whole`).
pub fn whole_max(ring_size: u64) -> usize {
    ffcore::ring::whole_max(ring_size as usize)
}

/// The largest DATA payload to send to a receiver whose ring is
/// `ring_size` bytes: small enough that a sender never waits for credit the
/// receiver will not grant (credit comes back in quarters of the ring).
pub fn frame_max(ring_size: u64) -> usize {
    (((ring_size / 4) - OVERHEAD) as usize).min(MAX_DATA)
}

/// CONNECT body: the dialing router asks for a connection to `listener`
/// on behalf of a client of `tenant`. `credit` is the dialing router's ring
/// size (what the acceptor may send before more credit comes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    pub tenant: String,
    pub listener: u64,
    pub nonce: u64,
    pub credit: u64,
}

/// ACCEPT body (header `conn` = the dialer's connection id): the acceptor's
/// connection id and ring size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    pub conn: u64,
    pub credit: u64,
}

/// REFUSE body (header `conn` = the dialer's connection id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    pub code: ErrorCode,
    pub message: String,
}

/// Ring sizes a peer may announce (as credit): what `--ring-size` allows.
pub fn valid_credit(c: u64) -> bool {
    ffcore::ring::valid_ring_size(c as usize)
}

pub fn encode_body<T: Serialize>(t: &T) -> Vec<u8> {
    let b = postcard::to_allocvec(t).expect("control bodies serialize");
    assert!(b.len() <= MAX_CONTROL);
    b
}

pub fn decode_body<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(b) {
        Ok((t, [])) => Ok(t),
        Ok(_) => Err("trailing bytes after a control body".into()),
        Err(e) => Err(format!("undecodable control body: {e}")),
    }
}

/// A whole control frame (header and body).
pub fn control_frame<T: Serialize>(ty: u8, conn: u64, body: &T) -> Vec<u8> {
    let body = encode_body(body);
    let mut f = Header::control(ty, conn, 0, body.len()).encode().to_vec();
    f.extend_from_slice(&body);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_roundtrip_and_bad_ones_are_refused() {
        let h = Header::data(7, REC_FIRST, 3, 100, 100);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let c = Header::control(CREDIT, 9, 1 << 30, 0);
        assert_eq!(Header::decode(&c.encode()).unwrap(), c);
        let bad = |f: &dyn Fn(&mut [u8; HDR_LEN])| {
            let mut b = h.encode();
            f(&mut b);
            Header::decode(&b)
        };
        assert!(bad(&|b| b[0] = 99).is_err(), "unknown type");
        assert!(bad(&|b| b[1] = 3).is_err(), "PAD is not sent");
        assert!(bad(&|b| b[2] = 1).is_err(), "reserved");
        assert!(bad(&|b| b[30] = 1).is_err(), "reserved");
        assert!(bad(&|b| b[4..8].copy_from_slice(&((MAX_DATA as u32) + 1).to_le_bytes())).is_err(), "too long");
        assert!(bad(&|b| b[16..24].copy_from_slice(&50u64.to_le_bytes())).is_err(), "longer than its message");
        let mut p = Header::control(PING, 0, 0, 0).encode();
        p[4] = 1;
        assert!(Header::decode(&p).is_err(), "PING with payload");
    }

    #[test]
    fn charges_cover_the_worst_ring_use() {
        // Split records: two headers, alignments and a pad.
        assert!(charge(REC_CONT, 0, 65536, 1 << 20) >= 65536 + 2 * 95 + 127);
        // A whole record may need a pad as large as itself at the wrap.
        assert!(charge(REC_FIRST, 1000, 1000, 1 << 20) >= 2 * record_span(1000) as u64);
        assert!(!is_whole(REC_FIRST, 1001, 1000, 1 << 20));
        assert!(!is_whole(REC_FIRST, 1000, 1000, 999));
        // Frames fit what credit comes back in (quarters of the ring).
        for ring in [4096u64, 1 << 16, 4 << 20, 1 << 30] {
            let f = frame_max(ring);
            assert!(charge(REC_CONT, 0, f, whole_max(ring)) <= ring / 4, "{ring}");
            let w = whole_max(ring).min(f);
            assert!(charge(REC_FIRST, w as u64, w, whole_max(ring)) <= ring / 4 * 3, "{ring}");
        }
    }

    #[test]
    fn control_bodies_roundtrip() {
        let c = Connect { tenant: "a".into(), listener: 1, nonce: 2, credit: 4096 };
        assert_eq!(decode_body::<Connect>(&encode_body(&c)).unwrap(), c);
        let r = Refuse { code: ErrorCode::PermissionDenied, message: "no".into() };
        assert_eq!(decode_body::<Refuse>(&encode_body(&r)).unwrap(), r);
        let mut b = encode_body(&c);
        b.push(0);
        assert!(decode_body::<Connect>(&b).is_err());
    }
}
