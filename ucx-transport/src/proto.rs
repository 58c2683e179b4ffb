//! What travels on an ff connection between two ifaces, and the packed
//! remote key. Pure data: no UCX calls, unit-tested here.
//!
//! Every UCT endpoint is one ffcore connection (ordered, tagged messages
//! over two shared-memory rings). The ffcore tag says what a message is:
//!
//! | kind | tag | payload | direction |
//! |---|---|---|---|
//! | active message | `AM << 8 \| id` | UCT AM bytes (short: 8-byte header + data) | initiator → target |
//! | put | `PUT << 8` | [`RmaReq`] + data if `len <= inline` | initiator → target |
//! | put data | `PUT_DATA << 8` | the data (streamed, any size) | initiator → target |
//! | put ack | `PUT_ACK << 8` | [`RmaReply`] | target → initiator |
//! | get | `GET << 8` | [`RmaReq`] | initiator → target |
//! | get reply | `GET_REPLY << 8` | [`RmaReply`] + data if inline | target → initiator |
//! | get data | `GET_DATA << 8` | the data (streamed) | target → initiator |
//!
//! The target validates every request against its *own* registrations
//! (cookie of its memory domain, key, bounds) before touching memory;
//! a bad request gets an error reply and never a write or read.

pub const AM: u32 = 1;
pub const PUT: u32 = 2;
pub const PUT_DATA: u32 = 3;
pub const PUT_ACK: u32 = 4;
pub const GET: u32 = 5;
pub const GET_REPLY: u32 = 6;
pub const GET_DATA: u32 = 7;

pub fn tag(kind: u32, id: u8) -> u32 {
    kind << 8 | id as u32
}
pub fn kind(tag: u32) -> u32 {
    tag >> 8
}
pub fn am_id(tag: u32) -> u8 {
    tag as u8
}

fn rd64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A PUT or GET request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmaReq {
    pub seq: u64,
    pub cookie: u64,
    pub key: u32,
    pub addr: u64,
    pub len: u64,
}

impl RmaReq {
    pub const LEN: usize = 40;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..20].copy_from_slice(&self.key.to_le_bytes());
        b[20..24].copy_from_slice(&0u32.to_le_bytes());
        b[24..32].copy_from_slice(&self.addr.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<RmaReq> {
        (b.len() >= Self::LEN).then(|| RmaReq { seq: rd64(b, 0), cookie: rd64(b, 8), key: rd32(b, 16), addr: rd64(b, 24), len: rd64(b, 32) })
    }
}

/// A PUT ack or GET reply: `status` is a UCS status (0 = OK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmaReply {
    pub seq: u64,
    pub status: i32,
    pub len: u64,
}

impl RmaReply {
    pub const LEN: usize = 24;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<RmaReply> {
        (b.len() >= Self::LEN).then(|| RmaReply { seq: rd64(b, 0), status: rd32(b, 8) as i32, len: rd64(b, 16) })
    }
}

/// A packed remote key: which registration of which memory domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRkey {
    pub cookie: u64,
    pub key: u32,
    pub base: u64,
    pub len: u64,
}

const RKEY_MAGIC: u32 = u32::from_le_bytes(*b"FFRK");

impl PackedRkey {
    pub const LEN: usize = 32;
    pub fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&RKEY_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.key.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..24].copy_from_slice(&self.base.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<PackedRkey> {
        if b.len() < Self::LEN || rd32(b, 0) != RKEY_MAGIC {
            return None;
        }
        Some(PackedRkey { key: rd32(b, 4), cookie: rd64(b, 8), base: rd64(b, 16), len: rd64(b, 24) })
    }
    /// Initiator-side sanity check (the target checks again, for real).
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|end| end <= self.base.saturating_add(self.len))
    }
}

/// Registered memory of one memory domain: key -> (base, len).
#[derive(Default)]
pub struct Registry {
    next: u32,
    regs: std::collections::HashMap<u32, (u64, u64)>,
}

impl Registry {
    pub fn insert(&mut self, base: u64, len: u64) -> u32 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if !self.regs.contains_key(&self.next) {
                break;
            }
        }
        self.regs.insert(self.next, (base, len));
        self.next
    }
    pub fn remove(&mut self, key: u32) -> bool {
        self.regs.remove(&key).is_some()
    }
    /// Is `[addr, addr+len)` inside registration `key`?
    pub fn check(&self, key: u32, addr: u64, len: u64) -> bool {
        match self.regs.get(&key) {
            Some(&(base, rlen)) => addr >= base && addr.checked_add(len).is_some_and(|end| end <= base + rlen),
            None => false,
        }
    }
    pub fn len(&self) -> usize {
        self.regs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_roundtrip() {
        let r = RmaReq { seq: 7, cookie: 0xfeed, key: 3, addr: 0x1000, len: 99 };
        let mut b = [0u8; RmaReq::LEN];
        r.write(&mut b);
        assert_eq!(RmaReq::read(&b), Some(r));
        assert_eq!(RmaReq::read(&b[..10]), None);
        let a = RmaReply { seq: 9, status: -7, len: 5 };
        let mut b = [0u8; RmaReply::LEN];
        a.write(&mut b);
        assert_eq!(RmaReply::read(&b), Some(a));
        let k = PackedRkey { cookie: 1, key: 2, base: 0x4000, len: 0x100 };
        let mut b = [0u8; PackedRkey::LEN];
        k.write(&mut b);
        assert_eq!(PackedRkey::read(&b), Some(k));
        b[0] ^= 1;
        assert_eq!(PackedRkey::read(&b), None, "bad magic");
        assert!(k.covers(0x4000, 0x100) && k.covers(0x40ff, 1) && !k.covers(0x40ff, 2) && !k.covers(0x3fff, 1));
        assert!(!k.covers(u64::MAX, 2), "no overflow");
        assert_eq!((kind(tag(AM, 31)), am_id(tag(AM, 31))), (AM, 31));
    }

    #[test]
    fn registry_bounds_and_keys() {
        let mut r = Registry::default();
        let a = r.insert(0x1000, 0x1000);
        let b = r.insert(0x8000, 16);
        assert_ne!(a, b);
        assert!(r.check(a, 0x1000, 0x1000));
        assert!(r.check(a, 0x1800, 0x800));
        assert!(!r.check(a, 0x1800, 0x801), "past the end");
        assert!(!r.check(a, 0xfff, 1), "before the start");
        assert!(!r.check(a, u64::MAX - 1, 4), "overflow");
        assert!(!r.check(b, 0x1000, 1), "another key's range");
        assert!(!r.check(99, 0x1000, 1), "unknown key");
        assert!(r.remove(a));
        assert!(!r.check(a, 0x1000, 1), "deregistered");
        assert!(!r.remove(a));
        assert_eq!(r.len(), 1);
    }
}
