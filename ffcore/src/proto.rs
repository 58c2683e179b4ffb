//! The client <-> router protocol: versioned, length-framed messages on a
//! Unix stream socket. File descriptors (memfds) travel beside a frame with
//! SCM_RIGHTS (see [`crate::fdpass`]).
//!
//! Frame = 12-byte header + body:
//!
//! | bytes | field   | rule                                   |
//! |-------|---------|----------------------------------------|
//! | 0..4  | magic   | `FFRP` (0x50524646 little endian)      |
//! | 4..6  | version | [`VERSION`]; others are refused        |
//! | 6..8  | flags   | must be 0                              |
//! | 8..12 | length  | body length, at most [`MAX_BODY`]      |
//!
//! The body is a [`Request`] or [`Reply`] in postcard encoding. Decoding
//! checks every field: trailing bytes, unknown variants, out-of-range values
//! and over-long strings are all errors.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

pub const MAGIC: u32 = u32::from_le_bytes(*b"FFRP");
/// 2: regions carry keys (`MapRegion`, `Reply::Region`'s keys).
pub const VERSION: u16 = 3;
pub const HEADER_LEN: usize = 12;
/// Largest body accepted. Requests are small; this bounds what a hostile
/// client can make the router buffer.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest string carried in a message (error text, tenant name).
pub const MAX_STRING: usize = 1024;
/// Largest shadow region a client may ask for in one request.
pub const MAX_REGION: u64 = 1 << 40;

/// A frame header, decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub len: usize,
}

impl Header {
    pub fn encode(len: usize) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        h
    }

    /// Checks magic, version, flags and length.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
        if magic != MAGIC {
            return Err(Error::protocol(format!("bad frame magic {magic:#010x}")));
        }
        let version = u16::from_le_bytes(b[4..6].try_into().unwrap());
        if version != VERSION {
            return Err(Error::Version { got: version, want: VERSION });
        }
        let flags = u16::from_le_bytes(b[6..8].try_into().unwrap());
        if flags != 0 {
            return Err(Error::protocol(format!("unknown frame flags {flags:#x}")));
        }
        let len = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        if len > MAX_BODY {
            return Err(Error::protocol(format!("frame body of {len} bytes exceeds the {MAX_BODY}-byte limit")));
        }
        Ok(Header { version, len })
    }
}

/// What a client asks of its router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message on a control connection.
    Hello { version: u16 },
    /// Open a listener; the reply carries what goes into a [`crate::Handle`].
    Listen,
    /// Connect to the listener named by a handle's fields.
    Connect { router_id: [u8; 16], listener: u64, nonce: u64 },
    /// Take one pending connection from a listener, if any.
    Accept { listener: u64 },
    CloseListener { listener: u64 },
    CloseConn { conn: u64 },
    /// Allocate a shadow memory region (a sealed memfd shared with the
    /// router): a header page the router writes, then `len` bytes of data
    /// (see [`crate::shm::region_header`]).
    AllocRegion { len: u64 },
    /// Free a region: the router marks it revoked in its header, so peers
    /// that mapped it stop using it, and drops its own mapping.
    FreeRegion { region: u64 },
    /// Counters (this tenant's, and the router's totals).
    Stats,
    /// Connect to a listener served by the router of another host, which
    /// other routers reach at `addr` (from the handle). The local router
    /// carries the connection; until it is set up the reply is `NotReady`
    /// and the client asks again with the same fields.
    ConnectRemote { router_id: [u8; 16], addr: NetAddr, listener: u64, nonce: u64 },
    /// Map another client's region of the same tenant on this host: the
    /// region's id and key, from a remote key its owner handed out. With
    /// the region's `key` the memfd comes read-write, with its `read_key`
    /// read-only.
    MapRegion { region: u64, key: u64 },
}

/// A router's address for other routers: IPv6 or IPv4-mapped IPv6, and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetAddr {
    pub ip: [u8; 16],
    pub port: u16,
}

impl From<SocketAddr> for NetAddr {
    fn from(a: SocketAddr) -> Self {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        NetAddr { ip: ip.octets(), port: a.port() }
    }
}

impl From<NetAddr> for SocketAddr {
    fn from(a: NetAddr) -> Self {
        let ip = Ipv6Addr::from(a.ip);
        SocketAddr::new(ip.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(ip)), a.port)
    }
}

/// What the router answers. Exactly one reply per request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Attached; the client's notification page (see [`crate::page`]) comes
    /// with the frame.
    /// `advertise`: where other hosts' routers reach this one (None: this
    /// router serves its own host only); it goes into every handle.
    Welcome { client: u64, tenant: String, router_id: [u8; 16], ring_size: u64, advertise: Option<NetAddr> },
    Listening { listener: u64, nonce: u64 },
    /// A connection; its shared-memory file comes with the frame.
    /// `forwarded`: the router plays the other side (the peer is on
    /// another host), so the client may post receives to it in its shadow
    /// memory ([`crate::ring::REC_POST`]); never to a client.
    Connected { conn: u64, side: u8, ring_size: u64, forwarded: bool },
    /// `Accept` found nothing yet: try again later.
    NotReady,
    /// A shadow region (`len` data bytes after the header page) and the
    /// random keys that let peers of the same tenant map it, read-write or
    /// read-only (both 0 in the reply to `MapRegion`); its memfd comes with
    /// the frame.
    Region { region: u64, len: u64, key: u64, read_key: u64 },
    Ok,
    Stats(Stats),
    Error { code: ErrorCode, message: String },
}

/// Resource counters: what the router holds on behalf of its clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub clients: u64,
    pub listeners: u64,
    pub conns: u64,
    pub regions: u64,
    /// Bytes of shared memory (rings and regions) the router keeps mapped.
    pub shared_bytes: u64,
    pub requests: u64,
    pub errors: u64,
    /// Payload-plus-header bytes and messages sent on the tenant's
    /// connections, and bytes queued in their rings now.
    pub bytes_sent: u64,
    pub messages_sent: u64,
    pub queued_bytes: u64,
}

/// Encodes a message into one frame (header + body).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).expect("protocol messages always serialize");
    assert!(body.len() <= MAX_BODY, "protocol message too large");
    let mut frame = Header::encode(body.len()).to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Decodes one body; every byte must be consumed.
pub fn decode_body<'a, T: Deserialize<'a> + Validate>(body: &'a [u8]) -> Result<T> {
    let (msg, rest): (T, _) =
        postcard::take_from_bytes(body).map_err(|e| Error::protocol(format!("undecodable message: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::protocol(format!("{} trailing bytes after message", rest.len())));
    }
    msg.validate()?;
    Ok(msg)
}

/// Decodes a whole frame held in memory (used by tests and the fuzzer).
pub fn decode_frame<'a, T: Deserialize<'a> + Validate>(frame: &'a [u8]) -> Result<T> {
    if frame.len() < HEADER_LEN {
        return Err(Error::protocol("truncated frame header"));
    }
    let h = Header::decode(frame[..HEADER_LEN].try_into().unwrap())?;
    let body = &frame[HEADER_LEN..];
    if body.len() != h.len {
        return Err(Error::protocol(format!("frame says {} body bytes, has {}", h.len, body.len())));
    }
    decode_body(body)
}

/// Semantic checks after decoding.
pub trait Validate {
    fn validate(&self) -> Result<()>;
}

fn check_str(s: &str) -> Result<()> {
    if s.len() > MAX_STRING {
        return Err(Error::protocol(format!("string of {} bytes exceeds {MAX_STRING}", s.len())));
    }
    Ok(())
}

impl Validate for Request {
    fn validate(&self) -> Result<()> {
        match self {
            Request::Hello { version } if *version != VERSION => {
                Err(Error::Version { got: *version, want: VERSION })
            }
            Request::AllocRegion { len } if *len == 0 || *len > MAX_REGION => {
                Err(Error::protocol(format!("region length {len} out of range 1..={MAX_REGION}")))
            }
            Request::ConnectRemote { addr, .. } if addr.port == 0 || Ipv6Addr::from(addr.ip).is_unspecified() => {
                Err(Error::protocol("remote router address is unspecified"))
            }
            _ => Ok(()),
        }
    }
}

impl Validate for Reply {
    fn validate(&self) -> Result<()> {
        match self {
            Reply::Welcome { tenant, ring_size, .. } => {
                check_str(tenant)?;
                if !ring_size.is_power_of_two() || *ring_size < 4096 || *ring_size > (1 << 30) {
                    return Err(Error::protocol(format!("bad ring size {ring_size}")));
                }
                Ok(())
            }
            Reply::Connected { side, .. } if *side > 1 => Err(Error::protocol(format!("bad side {side}"))),
            Reply::Error { message, .. } => check_str(message),
            _ => Ok(()),
        }
    }
}

/// Makes an error reply, truncating long text to the protocol's limit.
pub fn error_reply(code: ErrorCode, message: impl Into<String>) -> Reply {
    let mut message = message.into();
    if message.len() > MAX_STRING {
        let mut cut = MAX_STRING;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Reply::Error { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let reqs = [
            Request::Hello { version: VERSION },
            Request::Listen,
            Request::Connect { router_id: [7; 16], listener: 3, nonce: 99 },
            Request::AllocRegion { len: 4096 },
            Request::MapRegion { region: 5, key: 77 },
            Request::Stats,
            Request::ConnectRemote {
                router_id: [1; 16],
                addr: "10.88.0.2:7070".parse::<SocketAddr>().unwrap().into(),
                listener: 3,
                nonce: 4,
            },
        ];
        for r in reqs {
            assert_eq!(decode_frame::<Request>(&encode(&r)).unwrap(), r);
        }
    }

    #[test]
    fn rejects_bad_frames() {
        let good = encode(&Request::Listen);
        // bad magic
        let mut f = good.clone();
        f[0] ^= 1;
        assert!(matches!(decode_frame::<Request>(&f), Err(Error::Protocol(_))));
        // unknown version
        let mut f = good.clone();
        f[4] = 9;
        assert!(matches!(decode_frame::<Request>(&f), Err(Error::Version { got: 9, want: VERSION })));
        // flags
        let mut f = good.clone();
        f[6] = 1;
        assert!(decode_frame::<Request>(&f).is_err());
        // oversized length
        let mut f = good.clone();
        f[8..12].copy_from_slice(&((MAX_BODY + 1) as u32).to_le_bytes());
        assert!(decode_frame::<Request>(&f).is_err());
        // truncated body and trailing garbage
        assert!(decode_frame::<Request>(&good[..good.len() - 1]).is_err());
        let mut f = encode(&Request::Listen);
        f.push(0);
        f[8] += 1;
        assert!(decode_frame::<Request>(&f).is_err());
        // unknown variant
        let mut f = Header::encode(1).to_vec();
        f.push(200);
        assert!(decode_frame::<Request>(&f).is_err());
        // semantic checks
        assert!(decode_frame::<Request>(&encode(&Request::AllocRegion { len: 0 })).is_err());
        assert!(decode_frame::<Request>(&encode(&Request::Hello { version: 1 })).is_err());
        let nowhere = NetAddr { ip: [0; 16], port: 7 };
        let r = Request::ConnectRemote { router_id: [1; 16], addr: nowhere, listener: 1, nonce: 1 };
        assert!(decode_frame::<Request>(&encode(&r)).is_err());
    }

    #[test]
    fn net_addrs_convert_both_ways() {
        for a in ["10.88.0.1:7070", "[::1]:5", "[2001:db8::1]:65535"] {
            let s: SocketAddr = a.parse().unwrap();
            assert_eq!(SocketAddr::from(NetAddr::from(s)), s);
        }
        let w = Reply::Welcome { client: 1, tenant: "a".into(), router_id: [2; 16], ring_size: 4096, advertise: Some(NetAddr { ip: [0xfe; 16], port: 1 }) };
        assert_eq!(decode_frame::<Reply>(&encode(&w)).unwrap(), w);
    }
}
