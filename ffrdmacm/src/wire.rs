//! The connection manager's messages, on a TCP connection from the active
//! side to the passive side's bound address (as iWARP's connection set-up
//! runs over TCP). Every byte comes from a peer and is checked here: a
//! message is a 8-byte header (magic, kind, version, body length) and at
//! most [`BODY_MAX`] bytes of body.
//!
//! ```text
//! active                       passive
//!   REQ (queue pair, data) ──▶   CONNECT_REQUEST event
//!   ESTABLISHED event      ◀──  REP (queue pair, data)   [or REJ (data)]
//!   RTU                    ──▶   ESTABLISHED event
//!   DREQ                   ──▶   DISCONNECTED event
//!   DISCONNECTED event     ◀──  DREP
//! ```

/// "FFCM", little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FFCM");
pub const VERSION: u8 = 1;
pub const HEADER: usize = 8;
/// The largest body: a REP or REQ with the most private data.
pub const BODY_MAX: usize = CONN_FIXED + PRIVATE_MAX;
/// Most private data in a message (a `u8` length, as `rdma_conn_param`'s).
pub const PRIVATE_MAX: usize = 255;
const CONN_FIXED: usize = 4 + 4 + 16 + 4 + 6 + 4;

/// What one side says of its queue pair and the connection
/// (`rdma_conn_param`, plus the queue pair's address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub qp_num: u32,
    pub psn: u32,
    /// The device's GID (ff0: router address, listener, nonce).
    pub gid: [u8; 16],
    /// `ibv_qp_type` of the queue pair.
    pub qp_type: u32,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub srq: u8,
    /// UD: the queue key.
    pub qkey: u32,
    pub private: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Req(Conn),
    Rep(Conn),
    /// Refused by the application (`rdma_reject`), with its data.
    Rej(Vec<u8>),
    Rtu,
    Dreq,
    Drep,
}

const REQ: u8 = 1;
const REP: u8 = 2;
const REJ: u8 = 3;
const RTU: u8 = 4;
const DREQ: u8 = 5;
const DREP: u8 = 6;

/// What a peer sent that is not a message: the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Bad(pub &'static str);

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let kind = match self {
            Msg::Req(c) | Msg::Rep(c) => {
                body.extend_from_slice(&c.qp_num.to_le_bytes());
                body.extend_from_slice(&c.psn.to_le_bytes());
                body.extend_from_slice(&c.gid);
                body.extend_from_slice(&c.qp_type.to_le_bytes());
                body.extend_from_slice(&[c.responder_resources, c.initiator_depth, c.flow_control, c.retry_count, c.rnr_retry_count, c.srq]);
                body.extend_from_slice(&c.qkey.to_le_bytes());
                body.extend_from_slice(&c.private[..c.private.len().min(PRIVATE_MAX)]);
                if matches!(self, Msg::Req(_)) {
                    REQ
                } else {
                    REP
                }
            }
            Msg::Rej(p) => {
                body.extend_from_slice(&p[..p.len().min(PRIVATE_MAX)]);
                REJ
            }
            Msg::Rtu => RTU,
            Msg::Dreq => DREQ,
            Msg::Drep => DREP,
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(kind);
        out.push(VERSION);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The first message in `buf` and its length; `Ok(None)`: not all of
    /// it has come yet.
    pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, Bad> {
        if buf.len() < HEADER {
            // A peer speaking something else is refused at its first bytes.
            let n = buf.len().min(4);
            if buf[..n] != MAGIC.to_le_bytes()[..n] {
                return Err(Bad("not a FreeFlow connection manager"));
            }
            return Ok(None);
        }
        if buf[..4] != MAGIC.to_le_bytes() {
            return Err(Bad("not a FreeFlow connection manager"));
        }
        let (kind, version) = (buf[4], buf[5]);
        if version != VERSION {
            return Err(Bad("another version of the connection manager"));
        }
        let len = u16::from_le_bytes([buf[6], buf[7]]) as usize;
        if len > BODY_MAX {
            return Err(Bad("message too long"));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let b = &buf[HEADER..HEADER + len];
        let msg = match kind {
            REQ | REP => {
                if len < CONN_FIXED {
                    return Err(Bad("short connection message"));
                }
                let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
                let c = Conn {
                    qp_num: u32_at(0),
                    psn: u32_at(4),
                    gid: b[8..24].try_into().unwrap(),
                    qp_type: u32_at(24),
                    responder_resources: b[28],
                    initiator_depth: b[29],
                    flow_control: b[30],
                    retry_count: b[31],
                    rnr_retry_count: b[32],
                    srq: b[33],
                    qkey: u32_at(34),
                    private: b[CONN_FIXED..].to_vec(),
                };
                if kind == REQ {
                    Msg::Req(c)
                } else {
                    Msg::Rep(c)
                }
            }
            REJ if len <= PRIVATE_MAX => Msg::Rej(b.to_vec()),
            RTU | DREQ | DREP if len == 0 => match kind {
                RTU => Msg::Rtu,
                DREQ => Msg::Dreq,
                _ => Msg::Drep,
            },
            _ => return Err(Bad("unknown message")),
        };
        Ok(Some((msg, HEADER + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(private: usize) -> Conn {
        Conn {
            qp_num: 0x123456,
            psn: 77,
            gid: [9; 16],
            qp_type: 2,
            responder_resources: 4,
            initiator_depth: 3,
            flow_control: 1,
            retry_count: 7,
            rnr_retry_count: 6,
            srq: 0,
            qkey: 0,
            private: (0..private).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn every_message_survives_the_trip_also_cut_anywhere() {
        for m in [Msg::Req(conn(0)), Msg::Rep(conn(255)), Msg::Req(conn(56)), Msg::Rej(vec![1, 2, 3]), Msg::Rej(vec![]), Msg::Rtu, Msg::Dreq, Msg::Drep] {
            let b = m.encode();
            assert_eq!(Msg::decode(&b), Ok(Some((m.clone(), b.len()))));
            for cut in 0..b.len() {
                assert_eq!(Msg::decode(&b[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
            let mut two = b.clone();
            two.extend_from_slice(&Msg::Rtu.encode());
            assert_eq!(Msg::decode(&two), Ok(Some((m, b.len()))));
        }
    }

    #[test]
    fn hostile_bytes_are_refused_not_trusted() {
        assert!(Msg::decode(b"GET / HTTP/1.1\r\n").is_err());
        assert!(Msg::decode(b"G").is_err(), "refused at the first wrong byte");
        let mut b = Msg::Rtu.encode();
        b[5] = 9;
        assert_eq!(Msg::decode(&b), Err(Bad("another version of the connection manager")));
        let mut b = Msg::Rtu.encode();
        b[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(Msg::decode(&b), Err(Bad("message too long")), "a claimed length is checked before waiting for it");
        let mut b = Msg::Req(conn(0)).encode();
        b[6..8].copy_from_slice(&10u16.to_le_bytes());
        assert_eq!(Msg::decode(&b[..18]), Err(Bad("short connection message")));
        let mut b = Msg::Rtu.encode();
        b[4] = 99;
        assert_eq!(Msg::decode(&b), Err(Bad("unknown message")));
        let mut b = Msg::Dreq.encode();
        b[6] = 1;
        b.push(0);
        assert_eq!(Msg::decode(&b), Err(Bad("unknown message")), "an RTU, DREQ or DREP has no body");
        // Private data longer than a u8 length is cut on sending.
        let mut c = conn(0);
        c.private = vec![5; 1000];
        let Ok(Some((Msg::Req(back), _))) = Msg::decode(&Msg::Req(c).encode()) else { panic!() };
        assert_eq!(back.private.len(), PRIVATE_MAX);
    }

    /// Random bytes (most behind a valid header, so the bodies are reached)
    /// never panic, and a message never claims more than it was given.
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..200_000 {
            let len = (next() % 320) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 4 != 0 && b.len() >= HEADER {
                b[..4].copy_from_slice(&MAGIC.to_le_bytes());
                b[4] = (next() % 8) as u8;
                b[5] = VERSION;
                let body = (next() % (len as u64 - HEADER as u64 + 1)) as u16;
                b[6..8].copy_from_slice(&body.to_le_bytes());
            }
            if let Ok(Some((_, used))) = Msg::decode(&b) {
                assert!(used <= b.len());
            }
        }
    }
}
