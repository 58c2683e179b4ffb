//! What travels on an ff connection between two ifaces, the packed remote
//! key and the registry keys refer to. No UCX calls; unit-tested here.
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
//! | get, data held | `GET << 8 \| HOLD` | [`RmaReq`] | initiator → target |
//! | get go | `GET_GO << 8` | the request's sequence number (8 bytes) | initiator → target |
//! | get, receive posted | `GET << 8 \| POSTED` | [`RmaReq`] | initiator → target |
//! | atomic | `AMO << 8` | [`AmoReq`] | initiator → target |
//! | atomic reply | `AMO_REPLY << 8` | [`AmoReply`] (status, old value) | target → initiator |
//!
//! A GET marked [`HOLD`] (a large one between hosts, into the initiator's
//! shadow memory) has the target send its reply and then nothing more on
//! the connection until the initiator's GET_GO for it: the initiator posts
//! its receive for the data first, so that its router writes the data
//! straight from the link into the buffer ([`ffcore::Conn::places`])
//! instead of into the ring, at the cost of one round trip.
//!
//! A GET marked [`POSTED`] saves that round trip where it can: the
//! initiator posts its receive for the data just before it sends the
//! request (the router takes the post before the request leaves, so before
//! any answer can come back), and the target never holds it. It issues one
//! only while every op outstanding on the endpoint is such a GET, so the
//! messages before its data all have receives posted too. The target
//! answers it with one message, at once: the data alone on
//! success, an empty data message if it refused the GET (a GET that
//! passes the check never asks for 0 bytes: posted GETs are large).
//!
//! The target validates every request against its *own* registrations
//! (cookie of its memory domain, key, bounds) before touching memory;
//! a bad request gets an error reply and never a write or read.
//!
//! Records arrive in the connection's shared ring, which the peer (another
//! process, maybe another tenant's) can still write while we read it. So
//! fixed-size headers are first copied out with [`copy_header`] and decoded
//! from that private copy: every field is read from shared memory exactly
//! once, and what was checked is what is used.

pub const AM: u32 = 1;
pub const PUT: u32 = 2;
pub const PUT_DATA: u32 = 3;
pub const PUT_ACK: u32 = 4;
pub const GET: u32 = 5;
pub const GET_REPLY: u32 = 6;
pub const GET_DATA: u32 = 7;
pub const AMO: u32 = 8;
pub const AMO_REPLY: u32 = 9;
pub const GET_GO: u32 = 10;

/// The id byte of a GET's tag that asks the target to hold the data until
/// the initiator's GET_GO.
pub const HOLD: u8 = 1;
/// The id byte of a GET's tag that says the initiator posted its receive
/// for the data: the target sends the data alone, without a reply (an
/// empty data message if it refuses the GET).
pub const POSTED: u8 = 2;

/// How a GET's data comes back (the id byte of its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetWay {
    /// A reply, then the data (inline in the reply when small).
    Reply,
    /// A reply; the data once the initiator's GET_GO came ([`HOLD`]).
    Hold,
    /// The data alone, or an empty data message on failure ([`POSTED`]).
    Posted,
}

impl GetWay {
    pub fn id(self) -> u8 {
        match self {
            GetWay::Reply => 0,
            GetWay::Hold => HOLD,
            GetWay::Posted => POSTED,
        }
    }

    /// The way a GET tag's id byte asks for; an unknown byte (a peer's
    /// mistake) gets a plain reply.
    pub fn from_id(id: u8) -> GetWay {
        match id {
            HOLD => GetWay::Hold,
            POSTED => GetWay::Posted,
            _ => GetWay::Reply,
        }
    }
}

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

/// The first `N` bytes of a record of `len` bytes at `data` (in the shared
/// ring), copied out once; `None` if the record is shorter.
///
/// # Safety
/// `data` must be valid for reads of `len` bytes.
pub unsafe fn copy_header<const N: usize>(data: *const u8, len: usize) -> Option<[u8; N]> {
    if len < N {
        return None;
    }
    let mut h = [0u8; N];
    // SAFETY: N <= len bytes are readable at data (caller); h is ours.
    std::ptr::copy_nonoverlapping(data, h.as_mut_ptr(), N);
    Some(h)
}

/// A PUT or GET request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmaReq {
    pub seq: u64,
    pub cookie: u64,
    pub key: u64,
    pub addr: u64,
    pub len: u64,
}

impl RmaReq {
    pub const LEN: usize = 40;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..32].copy_from_slice(&self.addr.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<RmaReq> {
        (b.len() >= Self::LEN).then(|| RmaReq { seq: rd64(b, 0), cookie: rd64(b, 8), key: rd64(b, 16), addr: rd64(b, 24), len: rd64(b, 32) })
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

/// An atomic operation on a word of the target's registered memory
/// (`op`: [`ffcore::AtomicOp::code`], `width`: 4 or 8 bytes). Every atomic
/// is answered (posted ones too: flush waits for the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmoReq {
    pub seq: u64,
    pub cookie: u64,
    pub key: u64,
    pub addr: u64,
    pub value: u64,
    pub compare: u64,
    pub op: u8,
    pub width: u8,
}

impl AmoReq {
    pub const LEN: usize = 56;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..32].copy_from_slice(&self.addr.to_le_bytes());
        b[32..40].copy_from_slice(&self.value.to_le_bytes());
        b[40..48].copy_from_slice(&self.compare.to_le_bytes());
        b[48..56].copy_from_slice(&[self.op, self.width, 0, 0, 0, 0, 0, 0]);
    }
    pub fn read(b: &[u8]) -> Option<AmoReq> {
        (b.len() >= Self::LEN).then(|| AmoReq {
            seq: rd64(b, 0),
            cookie: rd64(b, 8),
            key: rd64(b, 16),
            addr: rd64(b, 24),
            value: rd64(b, 32),
            compare: rd64(b, 40),
            op: b[48],
            width: b[49],
        })
    }
}

/// The answer to an [`AmoReq`]: a UCS status and the word's old value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmoReply {
    pub seq: u64,
    pub status: i32,
    pub old: u64,
}

impl AmoReply {
    pub const LEN: usize = 24;
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.old.to_le_bytes());
    }
    pub fn read(b: &[u8]) -> Option<AmoReply> {
        (b.len() >= Self::LEN).then(|| AmoReply { seq: rd64(b, 0), status: rd32(b, 8) as i32, old: rd64(b, 16) })
    }
}

/// A packed remote key: which registration of which memory domain, and
/// the shadow region its whole pages live in, if any.
///
/// `cookie` is random per memory domain, `key` random per registration
/// (see [`Registry`]): a peer that holds one key learns nothing about the
/// process's other registrations. `base`/`len` only let the initiator check
/// its own requests; the target checks against its registry. `shadow` lets
/// a peer of the tenant on the same host map the registration's whole
/// pages ([`ffcore::mr`]); the router checks the region's key, and the
/// mapping is bounds-checked against the region itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRkey {
    pub cookie: u64,
    pub key: u64,
    pub base: u64,
    pub len: u64,
    pub shadow: Option<ffcore::RemoteKey>,
}

/// "FFK3": keys of earlier formats ("FFRK", "FFK2") do not unpack.
const RKEY_MAGIC: u32 = u32::from_le_bytes(*b"FFK3");

impl PackedRkey {
    /// The packed size (what `md_query` reports as `rkey_packed_size`):
    /// magic, flags (1: a shadow key follows), cookie, key, base, length,
    /// the shadow key (zero if none).
    pub const LEN: usize = 40 + ffcore::RemoteKey::LEN;
    pub fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&RKEY_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&u32::from(self.shadow.is_some()).to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..32].copy_from_slice(&self.base.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        let s: &mut [u8; ffcore::RemoteKey::LEN] = (&mut b[40..Self::LEN]).try_into().unwrap();
        match self.shadow {
            Some(k) => k.write(s),
            None => s.fill(0),
        }
    }
    pub fn read(b: &[u8]) -> Option<PackedRkey> {
        if b.len() < Self::LEN || rd32(b, 0) != RKEY_MAGIC || rd32(b, 4) > 1 {
            return None;
        }
        let shadow = (rd32(b, 4) == 1).then(|| ffcore::RemoteKey::read(b[40..Self::LEN].try_into().unwrap()));
        Some(PackedRkey { cookie: rd64(b, 8), key: rd64(b, 16), base: rd64(b, 24), len: rd64(b, 32), shadow })
    }
    /// Initiator-side sanity check (the target checks again, for real).
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|end| end <= self.base.saturating_add(self.len))
    }
}

/// Fills `buf` from the kernel's random source (getrandom, else
/// /dev/urandom). False if neither works: callers must then fail rather than
/// use predictable values.
pub fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most rest.len() bytes into rest.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr() as *mut libc::c_void, rest.len(), 0) };
        if n > 0 {
            done += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            use std::io::Read;
            return std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf[done..])).is_ok();
        }
    }
    true
}

/// Registered memory of one memory domain: key -> (base, len).
///
/// Every key is a fresh random 64-bit value from the kernel (one
/// getrandom per registration; never 0, never a live key's),
/// independent of every other key: keys are not sequential, and holding
/// one (in a packed rkey a peer legitimately got) does not help to guess
/// another. A lookup is one hash-map probe.
#[derive(Default)]
pub struct Registry {
    regs: std::collections::HashMap<u64, (u64, u64)>,
}

/// A fresh random key, or None if the kernel gives no random bytes.
fn random_key() -> Option<u64> {
    let mut b = [0u8; 8];
    fill_random(&mut b).then(|| u64::from_le_bytes(b))
}

impl Registry {
    /// Registers `[base, base+len)`; its key, or None without randomness.
    pub fn insert(&mut self, base: u64, len: u64) -> Option<u64> {
        loop {
            let key = random_key()?;
            if key != 0 && !self.regs.contains_key(&key) {
                self.regs.insert(key, (base, len));
                return Some(key);
            }
        }
    }
    pub fn remove(&mut self, key: u64) -> bool {
        self.regs.remove(&key).is_some()
    }
    /// Is `[addr, addr+len)` inside registration `key`?
    pub fn check(&self, key: u64, addr: u64, len: u64) -> bool {
        match self.regs.get(&key) {
            Some(&(base, rlen)) => addr >= base && addr.checked_add(len).is_some_and(|end| end <= base.saturating_add(rlen)),
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
        let q = AmoReq { seq: 3, cookie: 4, key: 5, addr: 0x1008, value: u64::MAX, compare: 7, op: 5, width: 8 };
        let mut b = [0u8; AmoReq::LEN];
        q.write(&mut b);
        assert_eq!(AmoReq::read(&b), Some(q));
        assert_eq!(AmoReq::read(&b[..AmoReq::LEN - 1]), None);
        let a = AmoReply { seq: 3, status: -3, old: 0xdead_beef_0000_0001 };
        let mut b = [0u8; AmoReply::LEN];
        a.write(&mut b);
        assert_eq!(AmoReply::read(&b), Some(a));
        let k = PackedRkey { cookie: 1, key: 0xdead_beef_0bad_f00d, base: 0x4000, len: 0x100, shadow: None };
        let mut b = [0u8; PackedRkey::LEN];
        k.write(&mut b);
        assert_eq!(PackedRkey::read(&b), Some(k));
        let s = PackedRkey { shadow: Some(ffcore::RemoteKey { router_id: [3; 16], region: 7, key: 8, base: 0x5000 }), ..k };
        s.write(&mut b);
        assert_eq!(PackedRkey::read(&b), Some(s));
        b[4] = 2;
        assert_eq!(PackedRkey::read(&b), None, "bad flags");
        b[4] = 1;
        b[0] ^= 1;
        assert_eq!(PackedRkey::read(&b), None, "bad magic");
        assert!(k.covers(0x4000, 0x100) && k.covers(0x40ff, 1) && !k.covers(0x40ff, 2) && !k.covers(0x3fff, 1));
        assert!(!k.covers(u64::MAX, 2), "no overflow");
        assert_eq!((kind(tag(AM, 31)), am_id(tag(AM, 31))), (AM, 31));
    }

    #[test]
    fn registry_bounds_and_keys() {
        let mut r = Registry::default();
        let a = r.insert(0x1000, 0x1000).unwrap();
        let b = r.insert(0x8000, 16).unwrap();
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

    /// Keys are random and independent: not sequential, high bits differ,
    /// and keys next to a real one (as a peer holding it would try) are not
    /// registrations. Random keys collide in the high 32 bits with
    /// probability 2^-32 per pair: these asserts do not flake in practice.
    #[test]
    fn registry_keys_are_unguessable() {
        let mut r = Registry::default();
        let keys: Vec<u64> = (0..40u64).map(|i| r.insert(0x10000 * (i + 1), 0x1000).unwrap()).collect();
        for (i, &a) in keys.iter().enumerate() {
            assert_ne!(a, 0);
            for &b in &keys[i + 1..] {
                assert!(a.abs_diff(b) > 1 << 32, "keys {a:#x} and {b:#x} are close");
                assert_ne!(a >> 32, b >> 32, "keys {a:#x} and {b:#x} share their high bits");
            }
        }
        let real: std::collections::HashSet<u64> = keys.iter().copied().collect();
        for &k in &keys {
            for d in 1..=64u64 {
                for forged in [k.wrapping_add(d), k.wrapping_sub(d), k ^ (1 << (d - 1))] {
                    if !real.contains(&forged) {
                        assert!((1..=40).all(|i| !r.check(forged, 0x10000 * i, 1)), "forged key {forged:#x} (near {k:#x}) accepted");
                    }
                }
            }
        }
        // Ones bits are spread: about half of all key bits are set.
        let ones: u32 = keys.iter().map(|k| k.count_ones()).sum();
        assert!((960..1600).contains(&ones), "{ones} of 2560 key bits set");
    }

    #[test]
    fn headers_are_copied_once() {
        let mut rec = [0u8; RmaReq::LEN + 3];
        let r = RmaReq { seq: 1, cookie: 2, key: 0x1234_5678_9abc_def0, addr: 4, len: 5 };
        r.write(&mut rec);
        // SAFETY: rec is readable for its length.
        let h = unsafe { copy_header::<{ RmaReq::LEN }>(rec.as_ptr(), rec.len()) }.unwrap();
        rec.fill(0xff); // the peer rewrites the ring: our copy stays
        assert_eq!(RmaReq::read(&h), Some(r));
        // SAFETY: as above; too short is refused without reading.
        assert_eq!(unsafe { copy_header::<{ RmaReq::LEN }>(rec.as_ptr(), RmaReq::LEN - 1) }, None);
    }
}
