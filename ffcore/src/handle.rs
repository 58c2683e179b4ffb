//! Connection handles: what a listener's owner passes out of band (NCCL's
//! bootstrap, UCX's worker address) so a peer can connect. At most 128 bytes
//! (NCCL_NET_HANDLE_MAXSIZE); ours is [`HANDLE_LEN`].
//!
//! A handle names the router that serves the listener (its id and, when the
//! router talks to other hosts, the address other routers reach it at), the
//! listener, and an unguessable nonce. It grants nothing by itself: the
//! router also checks that the connecting client is in the listener's tenant.
//!
//! Layout (64 bytes):
//!
//! | bytes  | field                                                    |
//! |--------|----------------------------------------------------------|
//! | 0..4   | magic `FFH1`                                             |
//! | 4..20  | router id                                                |
//! | 20..28 | listener id (little endian)                              |
//! | 28..36 | nonce (little endian)                                    |
//! | 36..52 | router address: IPv6, or IPv4-mapped IPv6 (network order) |
//! | 52..54 | router port (network order)                              |
//! | 54     | 1 if bytes 36..54 hold an address, 0 (and zeros) if not  |
//! | 55..64 | reserved, zero                                           |

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

pub const HANDLE_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"FFH1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub router_id: [u8; 16],
    pub listener: u64,
    pub nonce: u64,
    /// Where other hosts' routers reach the listener's router; None for a
    /// router that serves its own host only.
    pub addr: Option<SocketAddr>,
}

impl Handle {
    pub fn to_bytes(&self) -> [u8; HANDLE_LEN] {
        let mut b = [0u8; HANDLE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..20].copy_from_slice(&self.router_id);
        b[20..28].copy_from_slice(&self.listener.to_le_bytes());
        b[28..36].copy_from_slice(&self.nonce.to_le_bytes());
        if let Some(a) = self.addr {
            let ip = match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            b[36..52].copy_from_slice(&ip.octets());
            b[52..54].copy_from_slice(&a.port().to_be_bytes());
            b[54] = 1;
        }
        b
    }

    /// Parses a handle; `b` may be longer (e.g. NCCL's 128-byte buffer).
    pub fn from_bytes(b: &[u8]) -> Result<Handle> {
        if b.len() < HANDLE_LEN || b[0..4] != MAGIC {
            return Err(Error::InvalidHandle("not a FreeFlow handle".into()));
        }
        if b[55..HANDLE_LEN].iter().any(|&x| x != 0) {
            return Err(Error::InvalidHandle("reserved handle bytes are set".into()));
        }
        let addr = match b[54] {
            0 if b[36..54].iter().all(|&x| x == 0) => None,
            1 => {
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[36..52]).unwrap());
                let port = u16::from_be_bytes([b[52], b[53]]);
                if port == 0 || ip.is_unspecified() {
                    return Err(Error::InvalidHandle("handle names no router address".into()));
                }
                let ip = ip.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(ip));
                Some(SocketAddr::new(ip, port))
            }
            _ => return Err(Error::InvalidHandle("bad router address in handle".into())),
        };
        Ok(Handle {
            router_id: b[4..20].try_into().unwrap(),
            listener: u64::from_le_bytes(b[20..28].try_into().unwrap()),
            nonce: u64::from_le_bytes(b[28..36].try_into().unwrap()),
            addr,
        })
    }

    /// Hex text, for passing a handle on a command line or a pipe.
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Result<Handle> {
        let s = s.trim();
        if s.len() != 2 * HANDLE_LEN || !s.is_ascii() {
            return Err(Error::InvalidHandle(format!("expected {} hex digits", 2 * HANDLE_LEN)));
        }
        let bytes: Result<Vec<u8>> = (0..HANDLE_LEN)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| Error::InvalidHandle("bad hex".into())))
            .collect();
        Handle::from_bytes(&bytes?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let h = Handle { router_id: [3; 16], listener: 42, nonce: 0xdead_beef, addr: None };
        assert_eq!(Handle::from_hex(&h.to_hex()).unwrap(), h);
        let mut long = [0u8; 128];
        long[..HANDLE_LEN].copy_from_slice(&h.to_bytes());
        assert_eq!(Handle::from_bytes(&long).unwrap(), h);
        assert!(Handle::from_bytes(&[0u8; 128]).is_err());
        assert!(Handle::from_bytes(&h.to_bytes()[..10]).is_err());
        let mut bad = h.to_bytes();
        bad[40] = 1;
        assert!(Handle::from_bytes(&bad).is_err());
        assert!(Handle::from_hex("zz").is_err());
    }

    #[test]
    fn router_addresses_roundtrip_and_are_checked() {
        for a in ["10.88.0.2:7070", "[fe80::1]:9", "[2001:db8::5]:65535"] {
            let h = Handle { router_id: [1; 16], listener: 7, nonce: 8, addr: Some(a.parse().unwrap()) };
            let back = Handle::from_hex(&h.to_hex()).unwrap();
            assert_eq!(back, h, "{a}");
        }
        let h = Handle { router_id: [1; 16], listener: 7, nonce: 8, addr: Some("10.1.2.3:80".parse().unwrap()) };
        let b = h.to_bytes();
        assert_eq!(&b[36..52], &"::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets(), "IPv4-mapped");
        assert_eq!(&b[52..55], &[0, 80, 1]);
        // A flag other than 0/1, an address without the flag, port 0, and
        // the reserved tail are all refused.
        for (i, v) in [(54, 2u8), (40, 1), (60, 1)] {
            let mut bad = Handle { addr: None, ..h }.to_bytes();
            bad[i] = v;
            assert!(Handle::from_bytes(&bad).is_err(), "byte {i} = {v}");
        }
        let mut bad = b;
        bad[52] = 0;
        bad[53] = 0;
        assert!(Handle::from_bytes(&bad).is_err(), "port 0");
    }
}
