//! Connection handles: what a listener's owner passes out of band (NCCL's
//! bootstrap, UCX's worker address) so a peer can connect. At most 128 bytes
//! (NCCL_NET_HANDLE_MAXSIZE); ours is [`HANDLE_LEN`].
//!
//! A handle names the router that serves the listener, the listener, and an
//! unguessable nonce. It grants nothing by itself: the router also checks
//! that the connecting client is in the listener's tenant.

use crate::error::{Error, Result};

pub const HANDLE_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"FFH1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub router_id: [u8; 16],
    pub listener: u64,
    pub nonce: u64,
}

impl Handle {
    pub fn to_bytes(&self) -> [u8; HANDLE_LEN] {
        let mut b = [0u8; HANDLE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..20].copy_from_slice(&self.router_id);
        b[20..28].copy_from_slice(&self.listener.to_le_bytes());
        b[28..36].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Parses a handle; `b` may be longer (e.g. NCCL's 128-byte buffer).
    pub fn from_bytes(b: &[u8]) -> Result<Handle> {
        if b.len() < HANDLE_LEN || b[0..4] != MAGIC {
            return Err(Error::InvalidHandle("not a FreeFlow handle".into()));
        }
        if b[36..HANDLE_LEN].iter().any(|&x| x != 0) {
            return Err(Error::InvalidHandle("reserved handle bytes are set".into()));
        }
        Ok(Handle {
            router_id: b[4..20].try_into().unwrap(),
            listener: u64::from_le_bytes(b[20..28].try_into().unwrap()),
            nonce: u64::from_le_bytes(b[28..36].try_into().unwrap()),
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
        let h = Handle { router_id: [3; 16], listener: 42, nonce: 0xdead_beef };
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
}
