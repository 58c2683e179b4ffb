//! UD queue pairs and address handles. A UD send names its destination
//! with an address handle (a GID: which device context) and a QP number;
//! the context keeps one *datagram link* to each destination context it
//! sends to (an ffcore connection through the router, opened on the first
//! send, whose `HELLO` has source QPN 0: no queue pair has number 0), and
//! the destination reads datagrams from every link accepted that way.
//!
//! As on a NIC: a send completes once its datagram is on its way (in the
//! link's ring), whether or not it is received; a datagram that finds no
//! receive posted, no queue pair of that number in the ready state or a
//! different Q_Key is dropped; a receive gets a 40-byte GRH (IPv6 form:
//! source and destination GID) before the payload, `IBV_WC_GRH` and the
//! sender's QPN in `src_qp`. The payload is at most the port MTU (4096
//! bytes). A link that cannot be opened within the connect timeout, or
//! breaks, drops what is sent over it (the senders still complete, as a
//! NIC's do) and is retried on a later send.
//!
//! | tag | payload |
//! |---|---|
//! | `HELLO` | [`crate::wire::Hello`] with `src_qpn` 0: a datagram link |
//! | `UD` | [`UdHdr`] + payload |

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffcore::wake::{ConnWords, WakeWord};
use ffcore::{Conn, Handle};
use rustc_hash::FxHashMap;

use crate::dev::{Cq, Device, Inbox};
use crate::qp::{RecvWr, CONNECT_TIMEOUT};
use crate::sys::*;
use crate::wire::{self, Hello};

/// The largest UD payload: the port's MTU.
pub const UD_MTU: usize = 4096;
/// The GRH a UD receive gets before the payload.
pub const GRH_LEN: usize = 40;
/// `Hello::src_qpn` of a datagram link.
pub const LINK_QPN: u32 = 0;
/// Datagram links one context keeps open (a per-client cap).
const MAX_LINKS: usize = 4096;
/// A link that failed is not retried for this long (its sends are dropped).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A datagram's header on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdHdr {
    pub src_qpn: u32,
    pub dst_qpn: u32,
    pub qkey: u32,
    pub imm: u32,
    pub flags: u32,
    pub src_gid: [u8; 16],
}

impl UdHdr {
    pub const LEN: usize = 36;
    pub fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.src_qpn.to_le_bytes());
        b[4..8].copy_from_slice(&self.dst_qpn.to_le_bytes());
        b[8..12].copy_from_slice(&self.qkey.to_le_bytes());
        b[12..16].copy_from_slice(&self.imm.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20..36].copy_from_slice(&self.src_gid);
    }
    pub fn read(b: &[u8]) -> Option<UdHdr> {
        let r = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        (b.len() >= Self::LEN).then(|| UdHdr {
            src_qpn: r(0),
            dst_qpn: r(4),
            qkey: r(8),
            imm: r(12),
            flags: r(16),
            src_gid: b[20..36].try_into().unwrap(),
        })
    }
}

pub struct UdSend {
    pub wr_id: u64,
    pub signaled: bool,
    pub gid: [u8; 16],
    pub qpn: u32,
    pub qkey: u32,
    pub imm: Option<u32>,
    /// The payload, copied when posted (at most [`UD_MTU`]).
    pub data: Vec<u8>,
}

pub struct UdQp {
    pub qpn: u32,
    pub pd: usize,
    pub send_cq: Arc<Cq>,
    pub recv_cq: Arc<Cq>,
    pub sig_all: bool,
    pub cap: ibv_qp_cap,
    pub state: u32,
    pub qkey: u32,
    pub attr: ibv_qp_attr,
    pub rq: VecDeque<RecvWr>,
    pub sq: VecDeque<UdSend>,
}

fn wc(wr_id: u64, status: u32, opcode: u32, len: usize, qpn: u32) -> ibv_wc {
    ibv_wc { wr_id, status, opcode, byte_len: len as u32, qp_num: qpn, ..Default::default() }
}

impl UdQp {
    pub fn new(qpn: u32, pd: usize, send_cq: Arc<Cq>, recv_cq: Arc<Cq>, sig_all: bool, cap: ibv_qp_cap) -> UdQp {
        UdQp { qpn, pd, send_cq, recv_cq, sig_all, cap, state: IBV_QPS_RESET, qkey: 0, attr: ibv_qp_attr::default(), rq: VecDeque::new(), sq: VecDeque::new() }
    }

    /// The error state: everything posted is flushed.
    pub fn fail(&mut self) {
        self.state = IBV_QPS_ERR;
        for s in self.sq.drain(..) {
            self.send_cq.push(wc(s.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_SEND, 0, self.qpn));
        }
        for r in self.rq.drain(..) {
            self.recv_cq.push(wc(r.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, self.qpn));
        }
    }

    pub fn reset(&mut self) {
        self.state = IBV_QPS_RESET;
        self.sq.clear();
        self.rq.clear();
    }

    /// Takes one datagram for this queue pair (`data` is a copy).
    pub fn deliver(&mut self, dev: &Device, h: &UdHdr, data: &[u8]) {
        if !(self.state == IBV_QPS_RTR || self.state == IBV_QPS_RTS) || h.qkey != self.qkey {
            return;
        }
        let Some(r) = self.rq.pop_front() else { return };
        let len = GRH_LEN + data.len();
        if r.sges.iter().map(|s| s.len as usize).sum::<usize>() < len {
            self.recv_cq.push(wc(r.wr_id, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, self.qpn));
            return;
        }
        let mut b = Vec::with_capacity(len);
        // The GRH, as an IPv6 header: version 6, payload length, next
        // header (UDP), hop limit, then the source and destination GIDs.
        b.extend_from_slice(&[0x60, 0, 0, 0]);
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(&[17, 64]);
        b.extend_from_slice(&h.src_gid);
        b.extend_from_slice(&dev.port.gid);
        b.extend_from_slice(data);
        {
            let _w = ffcore::shadow::writing();
            let mut off = 0;
            for s in &r.sges {
                if off == len {
                    break;
                }
                let n = (s.len as usize).min(len - off);
                // SAFETY: the receive's elements were checked against the
                // protection domain's registrations (local write) when posted.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr().add(off), s.addr as *mut u8, n) };
                off += n;
            }
        }
        let mut w = wc(r.wr_id, IBV_WC_SUCCESS, IBV_WC_RECV, len, self.qpn);
        w.src_qp = h.src_qpn;
        w.wc_flags = IBV_WC_GRH;
        if h.flags & wire::F_IMM != 0 {
            w.__bindgen_anon_1.imm_data = h.imm;
            w.wc_flags |= IBV_WC_WITH_IMM;
        }
        self.recv_cq.push(w);
    }
}

enum Out {
    Connecting { handle: Handle, since: Instant, next_try: Instant },
    Up(Box<Conn>),
    Failed(Instant),
}

struct In {
    conn: Box<Conn>,
    words: Option<Arc<ConnWords>>,
}

/// A context's datagram links, both ways.
#[derive(Default)]
pub struct Links {
    out: FxHashMap<[u8; 16], Out>,
    inbound: Vec<In>,
}

impl Links {
    /// A link another context opened to us (its `HELLO` said so).
    pub fn accepted(&mut self, conn: Conn, words: Option<Arc<ConnWords>>) {
        if self.inbound.len() >= MAX_LINKS {
            log::warn!("ffverbs: {MAX_LINKS} datagram links in: one more refused");
            return;
        }
        self.inbound.push(In { conn: Box::new(conn), words });
    }

    pub fn arm(&self, words: &mut Vec<WakeWord>) {
        words.extend(self.inbound.iter().filter_map(|i| i.words.as_ref().map(|w| w.arm())));
    }

    pub fn has_events(&mut self) -> bool {
        self.inbound.iter_mut().any(|i| i.conn.has_events())
    }

    /// Links in: to be read even by a context without UD queue pairs, as
    /// they carry datagrams for every queue pair of the port (handed to
    /// the context that owns it).
    pub fn has_inbound(&self) -> bool {
        !self.inbound.is_empty()
    }
}

/// Moves datagrams: reads every inbound link into the queue pairs, and
/// sends what the queue pairs posted. True if anything moved.
pub fn progress(dev: &Device, links: &mut Links, qps: &mut FxHashMap<u32, UdQp>) -> bool {
    let mut did = false;
    // In.
    let mut i = 0;
    while i < links.inbound.len() {
        let gone;
        loop {
            let mut got: Option<(UdHdr, Vec<u8>)> = None;
            let r = links.inbound[i].conn.poll_whole(|tag, p, len| {
                if tag != wire::UD || len < UdHdr::LEN || len - UdHdr::LEN > UD_MTU {
                    return;
                }
                // SAFETY: len bytes at p (the peer's: copied once, then checked).
                let b = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
                if let Some(h) = UdHdr::read(&b) {
                    got = Some((h, b[UdHdr::LEN..].to_vec()));
                }
            });
            match r {
                Ok(true) => {
                    did = true;
                    if let Some((h, data)) = got {
                        deliver(dev, qps, h, data);
                    }
                }
                Ok(false) => {
                    gone = links.inbound[i].conn.peer_closed() && !links.inbound[i].conn.has_events();
                    break;
                }
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            links.inbound.swap_remove(i);
            did = true;
        } else {
            i += 1;
        }
    }
    // Out.
    let mut local: Vec<(UdHdr, Vec<u8>)> = Vec::new();
    for q in qps.values_mut() {
        if q.state != IBV_QPS_RTS {
            continue;
        }
        while let Some(s) = q.sq.front() {
            let h = UdHdr {
                src_qpn: q.qpn,
                dst_qpn: s.qpn,
                qkey: s.qkey,
                imm: s.imm.unwrap_or(0),
                flags: if s.imm.is_some() { wire::F_IMM } else { 0 },
                src_gid: dev.port.gid,
            };
            let sent = if s.gid == dev.port.gid {
                local.push((h, s.data.clone()));
                true
            } else {
                match send_to(dev, links, s.gid, &h, &s.data) {
                    Some(sent) => sent,
                    None => break,
                }
            };
            if !sent {
                break;
            }
            let s = q.sq.pop_front().unwrap();
            if s.signaled {
                q.send_cq.push(wc(s.wr_id, IBV_WC_SUCCESS, IBV_WC_SEND, s.data.len(), q.qpn));
            }
            did = true;
        }
    }
    for (h, data) in local {
        deliver(dev, qps, h, data);
    }
    did
}

/// A datagram to queue pair `h.dst_qpn` of this process: to ours, or
/// handed to the context that owns it (its engine delivers it); dropped if
/// there is none, or that context has [`Inbox::MAX`] waiting, as a NIC
/// drops what no queue pair takes.
fn deliver(dev: &Device, qps: &mut FxHashMap<u32, UdQp>, h: UdHdr, data: Vec<u8>) {
    if let Some(q) = qps.get_mut(&h.dst_qpn) {
        return q.deliver(dev, &h, &data);
    }
    let Some(owner) = dev.port.owner(h.dst_qpn).filter(|o| !std::ptr::eq(Arc::as_ptr(o), dev)) else { return };
    let mut inbox = owner.inbox.lock().unwrap();
    if inbox.datagrams.len() < Inbox::MAX {
        inbox.datagrams.push((h, data));
        drop(inbox);
        owner.kick();
    }
}

/// Puts one datagram on the link to `gid`: Some(true) if it went (or was
/// dropped: the link failed), Some(false) if the ring is full, None while
/// the link is being opened.
fn send_to(dev: &Device, links: &mut Links, gid: [u8; 16], h: &UdHdr, data: &[u8]) -> Option<bool> {
    let now = Instant::now();
    if !links.out.contains_key(&gid) {
        if links.out.len() >= MAX_LINKS {
            links.out.retain(|_, o| !matches!(o, Out::Failed(_)));
            if links.out.len() >= MAX_LINKS {
                return Some(true); // dropped
            }
        }
        links.out.insert(gid, Out::Connecting { handle: crate::qp::handle_for(dev, &gid), since: now, next_try: now });
    }
    let o = links.out.get_mut(&gid).unwrap();
    if let Out::Failed(at) = o {
        if at.elapsed() < RETRY_AFTER {
            return Some(true);
        }
        *o = Out::Connecting { handle: crate::qp::handle_for(dev, &gid), since: now, next_try: now };
    }
    if let Out::Connecting { handle, since, next_try } = o {
        if now < *next_try {
            return None;
        }
        match dev.port.ff.connect(handle) {
            Ok(Some(mut c)) => {
                let hello = Hello { src_qpn: LINK_QPN, dst_qpn: 0 };
                let ok = c.try_send_with(wire::HELLO, Hello::LEN, |p| {
                    // SAFETY: Hello::LEN writable bytes at p.
                    hello.write(unsafe { std::slice::from_raw_parts_mut(p, Hello::LEN) });
                    Hello::LEN
                });
                *o = if matches!(ok, Ok(Some(_))) { Out::Up(Box::new(c)) } else { Out::Failed(now) };
            }
            Ok(None) if since.elapsed() < CONNECT_TIMEOUT => {
                *next_try = now + Duration::from_millis(1);
                return None;
            }
            Ok(None) | Err(_) => {
                log::warn!("ffverbs: no datagram link to {gid:02x?}: datagrams to it are dropped");
                *o = Out::Failed(now);
            }
        }
    }
    let Out::Up(c) = o else { return Some(true) };
    let len = UdHdr::LEN + data.len();
    let r = c.try_send_with(wire::UD, len, |p| {
        // SAFETY: len writable bytes at p.
        let b = unsafe { std::slice::from_raw_parts_mut(p, len) };
        h.write(&mut b[..UdHdr::LEN]);
        b[UdHdr::LEN..].copy_from_slice(data);
        len
    });
    match r {
        Ok(Some(_)) => Some(true),
        Ok(None) => {
            c.progress();
            Some(false)
        }
        Err(e) => {
            log::debug!("ffverbs: datagram link broke: {e}");
            *o = Out::Failed(now);
            Some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrips() {
        let h = UdHdr { src_qpn: 5, dst_qpn: 0x12345, qkey: 0x1ee7a330, imm: 7, flags: wire::F_IMM, src_gid: [9; 16] };
        let mut b = [0u8; UdHdr::LEN];
        h.write(&mut b);
        assert_eq!(UdHdr::read(&b), Some(h));
        assert_eq!(UdHdr::read(&b[..UdHdr::LEN - 1]), None);
    }
}
