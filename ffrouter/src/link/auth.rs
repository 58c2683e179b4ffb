//! Who may form a link: the handshake that opens every link stream, and the
//! session keys it yields.
//!
//! Every router of a cluster shares one secret (`--peer-secret-file`). On
//! each stream, before anything else:
//!
//! ```text
//! acceptor -> dialer   GREET  "FFLG" ver flags  id_A[16] cA[32]                      56 bytes
//! dialer -> acceptor   HELLO  "FFLH" ver flags stream streams  id_D[16] link cD[32]  72 bytes
//! acceptor -> dialer   ACK    "FFLA" status  proof_A = HMAC(secret, "acpt" | T)       40 bytes
//! dialer -> acceptor   PROOF  "FFLP" status  proof_D = HMAC(secret, "dial" | T)       40 bytes
//! acceptor -> dialer   DONE   "FFLD" status                                           8 bytes
//! ```
//!
//! `T` is GREET and HELLO as sent: both router ids, both fresh 32-byte
//! challenges, the link id and stream numbers. So a proof is bound to both
//! routers and both challenges, and is worth nothing on another stream. The
//! dialer, whom tenants can point at any address, proves nothing until the
//! far end has proved it knows the secret over the dialer's fresh challenge;
//! the acceptor's proof, given to whoever connects, only answers a
//! transcript holding its own fresh challenge. Both sides refuse a peer
//! that claims their own id (a link to oneself, which is what a relay
//! between a router's dialer and its own listener looks like).
//!
//! Afterwards each direction of the stream has its own 128-bit key,
//! `HKDF-SHA256(salt = SHA-256(T), secret)` with the direction as info,
//! and every byte is sealed ([`super::seal`]): nobody without the secret can
//! read, inject, change, drop or replay frames, even from inside the TCP
//! connection (a container relaying it).
//!
//! Without a secret (`--insecure-no-peer-secret`) the same messages carry
//! zero proofs and the stream stays in clear: whoever reaches
//! `--listen-addr` is trusted as a router.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::{digest, hkdf, hmac};

use super::seal::Key;

const VERSION: u16 = 2;
const GREET_LEN: usize = 56;
const HELLO_LEN: usize = 72;
const ACK_LEN: usize = 40;
const DONE_LEN: usize = 8;
/// Flag: this router requires the shared secret.
const FLAG_SECRET: u16 = 1;
/// Most streams a link may have.
pub const MAX_STREAMS: usize = 64;

/// Why a handshake was refused (sent in ACK, PROOF and DONE).
const OK: u32 = 1;
const REFUSED: u32 = 0;
const SELF_LINK: u32 = 2;
const NO_SECRET: u32 = 3;
/// The dialer asked for more streams than the acceptor takes; the most it
/// takes is in the status' upper 16 bits.
const TOO_MANY_STREAMS: u32 = 4;

/// The error [`dial`] returns when the acceptor takes fewer streams per
/// link than the dialer asked for (its `--peer-streams` is smaller): dial
/// again with `max` streams.
#[derive(Debug)]
pub struct FewerStreams {
    pub max: usize,
}

impl std::fmt::Display for FewerStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer router takes at most {} streams per link", self.max)
    }
}

impl std::error::Error for FewerStreams {}

/// The most streams per link the peer takes, if that is why it refused.
pub fn fewer_streams(e: &io::Error) -> Option<usize> {
    e.get_ref()?.downcast_ref::<FewerStreams>().map(|f| f.max)
}

/// Who this router is to its peers.
#[derive(Clone)]
pub struct Identity {
    pub router_id: [u8; 16],
    /// `--peer-secret-file`: without it, links are neither authenticated nor
    /// encrypted.
    pub secret: Option<Arc<[u8]>>,
}

/// The record keys of an authenticated stream, one per direction.
pub struct Keys {
    pub tx: Key,
    pub rx: Key,
}

/// HKDF output of a given length (ring's way of asking for raw bytes).
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// A stream after its handshake: the peer's id, and the keys (None without
/// a secret).
pub struct Authed {
    pub peer_id: [u8; 16],
    pub keys: Option<Keys>,
}

/// What the acceptor also learns from the dialer.
pub struct Hello {
    pub link: u64,
    pub stream: usize,
    pub streams: usize,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn denied(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg.into())
}

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "link handshake took too long"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed during the link handshake")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "link handshake took too long"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_by(s: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_write_timeout(Some(left))?;
    s.write_all(buf)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A status message (ACK, PROOF or DONE): magic, status, and a proof for
/// ACK and PROOF.
fn status_msg(magic: &[u8; 4], status: u32, proof: Option<&[u8; 32]>) -> Vec<u8> {
    let mut m = Vec::with_capacity(ACK_LEN);
    m.extend_from_slice(magic);
    m.extend_from_slice(&status.to_le_bytes());
    if let Some(p) = proof {
        m.extend_from_slice(p);
    }
    m
}

fn refusal(status: u32, who: &str) -> io::Error {
    match status & 0xffff {
        TOO_MANY_STREAMS => io::Error::new(io::ErrorKind::InvalidInput, FewerStreams { max: (status >> 16) as usize }),
        SELF_LINK => denied(format!("{who} refused the link: it is this router itself")),
        NO_SECRET => denied(format!("{who} refused the link: one side has --peer-secret-file and the other has not")),
        _ => denied(format!("{who} refused the link: the peer secrets differ")),
    }
}

/// What a proof signs: the protocol, the prover's role, the transcript.
fn proof_input(role: &[u8], transcript: &[u8]) -> Vec<u8> {
    [&b"freeflow-link-v2 "[..], role, transcript].concat()
}

impl Identity {
    fn flags(&self) -> u16 {
        if self.secret.is_some() {
            FLAG_SECRET
        } else {
            0
        }
    }

    /// HMAC-SHA256 of the transcript for `role`; zero without a secret.
    fn prove(&self, role: &[u8], transcript: &[u8]) -> [u8; 32] {
        let Some(secret) = &self.secret else { return [0; 32] };
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), &proof_input(role, transcript));
        tag.as_ref().try_into().expect("SHA-256 tags are 32 bytes")
    }

    /// Checks a peer's proof in constant time (always true without a secret).
    fn check(&self, role: &[u8], transcript: &[u8], proof: &[u8]) -> bool {
        let Some(secret) = &self.secret else { return true };
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), &proof_input(role, transcript), proof).is_ok()
    }

    /// The two directions' keys of a stream whose handshake was `transcript`.
    fn keys(&self, transcript: &[u8], dialer: bool) -> Option<Keys> {
        let secret = self.secret.as_ref()?;
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, digest::digest(&digest::SHA256, transcript).as_ref());
        let prk = salt.extract(secret);
        let key = |info: &[u8]| {
            let info = [&b"freeflow-link-v2 "[..], info];
            let mut k: Key = [0; 16];
            prk.expand(&info, Len(k.len())).and_then(|okm| okm.fill(&mut k)).expect("HKDF yields 16 bytes");
            k
        };
        let (d2a, a2d) = (key(b"dialer to acceptor"), key(b"acceptor to dialer"));
        Some(if dialer { Keys { tx: d2a, rx: a2d } } else { Keys { tx: a2d, rx: d2a } })
    }

    /// Checks GREET/HELLO flags against ours.
    fn same_policy(&self, flags: u16) -> bool {
        (flags & FLAG_SECRET) == self.flags()
    }
}

/// The dialer's side of a stream's handshake, finished by `deadline`.
pub fn dial(s: &mut TcpStream, me: &Identity, link: u64, stream: usize, streams: usize, deadline: Instant) -> io::Result<Authed> {
    let mut greet = [0u8; GREET_LEN];
    read_by(s, &mut greet, deadline)?;
    if &greet[0..4] != b"FFLG" {
        return Err(bad("not a FreeFlow router"));
    }
    if u16_at(&greet, 4) != VERSION {
        return Err(bad(format!("the peer router speaks link version {} (this one {VERSION})", u16_at(&greet, 4))));
    }
    let peer_id: [u8; 16] = greet[8..24].try_into().unwrap();
    if peer_id == me.router_id {
        return Err(denied("the address answers with this router's own id (a link to itself)"));
    }
    if !me.same_policy(u16_at(&greet, 6)) {
        return Err(denied("one side has --peer-secret-file and the other has not"));
    }
    let mut hello = [0u8; HELLO_LEN];
    hello[0..4].copy_from_slice(b"FFLH");
    hello[4..6].copy_from_slice(&VERSION.to_le_bytes());
    hello[6..8].copy_from_slice(&me.flags().to_le_bytes());
    hello[8..10].copy_from_slice(&(stream as u16).to_le_bytes());
    hello[10..12].copy_from_slice(&(streams as u16).to_le_bytes());
    hello[16..32].copy_from_slice(&me.router_id);
    hello[32..40].copy_from_slice(&link.to_le_bytes());
    hello[40..72].copy_from_slice(&rand::random::<[u8; 32]>());
    write_by(s, &hello, deadline)?;
    let transcript = [&greet[..], &hello[..]].concat();
    let mut ack = [0u8; ACK_LEN];
    read_by(s, &mut ack[..8], deadline)?;
    if &ack[0..4] != b"FFLA" {
        return Err(bad("bad link handshake reply"));
    }
    if u32_at(&ack, 4) != OK {
        return Err(refusal(u32_at(&ack, 4), "the peer router"));
    }
    read_by(s, &mut ack[8..], deadline)?;
    if !me.check(b"acpt", &transcript, &ack[8..40]) {
        // Prove nothing to a party that does not know the secret.
        return Err(denied("the peer does not know our --peer-secret-file"));
    }
    write_by(s, &status_msg(b"FFLP", OK, Some(&me.prove(b"dial", &transcript))), deadline)?;
    let mut done = [0u8; DONE_LEN];
    read_by(s, &mut done, deadline)?;
    if &done[0..4] != b"FFLD" {
        return Err(bad("bad link handshake reply"));
    }
    if u32_at(&done, 4) != OK {
        return Err(refusal(u32_at(&done, 4), "the peer router"));
    }
    Ok(Authed { peer_id, keys: me.keys(&transcript, true) })
}

/// The acceptor's side of a stream's handshake, finished by `deadline`:
/// a link of more than `max_streams` streams is refused (the dialer tries
/// again with as many, see [`FewerStreams`]).
pub fn accept(s: &mut TcpStream, me: &Identity, max_streams: usize, deadline: Instant) -> io::Result<(Authed, Hello)> {
    let mut greet = [0u8; GREET_LEN];
    greet[0..4].copy_from_slice(b"FFLG");
    greet[4..6].copy_from_slice(&VERSION.to_le_bytes());
    greet[6..8].copy_from_slice(&me.flags().to_le_bytes());
    greet[8..24].copy_from_slice(&me.router_id);
    greet[24..56].copy_from_slice(&rand::random::<[u8; 32]>());
    write_by(s, &greet, deadline)?;
    let mut hello = [0u8; HELLO_LEN];
    read_by(s, &mut hello, deadline)?;
    if &hello[0..4] != b"FFLH" || u16_at(&hello, 4) != VERSION || hello[12..16] != [0; 4] {
        return Err(bad("bad link hello"));
    }
    let stream = u16_at(&hello, 8) as usize;
    let streams = u16_at(&hello, 10) as usize;
    if streams == 0 || streams > MAX_STREAMS || stream >= streams {
        return Err(bad("bad stream numbers in link hello"));
    }
    let peer_id: [u8; 16] = hello[16..32].try_into().unwrap();
    let link = u64::from_le_bytes(hello[32..40].try_into().unwrap());
    let refuse = |s: &mut TcpStream, why: u32, e: io::Error| {
        let _ = write_by(s, &status_msg(b"FFLA", why, None), deadline);
        Err(e)
    };
    if peer_id == me.router_id {
        return refuse(s, SELF_LINK, denied("the dialer claims this router's own id (a relayed link to itself)"));
    }
    if !me.same_policy(u16_at(&hello, 6)) {
        return refuse(s, NO_SECRET, denied("one side has --peer-secret-file and the other has not"));
    }
    if streams > max_streams {
        let why = TOO_MANY_STREAMS | (max_streams.min(MAX_STREAMS) as u32) << 16;
        return refuse(s, why, io::Error::new(io::ErrorKind::InvalidInput, format!("the dialer asks for {streams} streams per link, this router takes {max_streams}")));
    }
    let transcript = [&greet[..], &hello[..]].concat();
    write_by(s, &status_msg(b"FFLA", OK, Some(&me.prove(b"acpt", &transcript))), deadline)?;
    let mut proof = [0u8; ACK_LEN];
    read_by(s, &mut proof, deadline)?;
    if &proof[0..4] != b"FFLP" || u32_at(&proof, 4) != OK {
        return Err(bad("bad link proof"));
    }
    if !me.check(b"dial", &transcript, &proof[8..40]) {
        let _ = write_by(s, &status_msg(b"FFLD", REFUSED, None), deadline);
        return Err(denied("the dialer does not know our --peer-secret-file"));
    }
    write_by(s, &status_msg(b"FFLD", OK, None), deadline)?;
    Ok((Authed { peer_id, keys: me.keys(&transcript, false) }, Hello { link, stream, streams }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn ident(id: u8, secret: Option<&[u8]>) -> Identity {
        Identity { router_id: [id; 16], secret: secret.map(Arc::from) }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(3)
    }

    type Both = (io::Result<Authed>, io::Result<(Authed, Hello)>);

    /// A listener whose first stream `acceptor` handshakes (taking at most
    /// `max_streams`), on a thread: (its address, the thread).
    fn accepting(acceptor: Identity, max_streams: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<io::Result<(Authed, Hello)>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept(&mut s, &acceptor, max_streams, soon())
        });
        (addr, t)
    }

    fn pair(dialer: Identity, acceptor: Identity) -> Both {
        let (addr, t) = accepting(acceptor, MAX_STREAMS);
        let mut s = TcpStream::connect(addr).unwrap();
        let d = dial(&mut s, &dialer, 77, 1, 2, soon());
        drop(s);
        (d, t.join().unwrap())
    }

    const K: &[u8] = b"a secret of sixteen bytes or more";

    #[test]
    fn both_sides_prove_the_secret_and_get_matching_keys() {
        let (d, a) = pair(ident(1, Some(K)), ident(2, Some(K)));
        let (d, (a, hello)) = (d.unwrap(), a.unwrap());
        assert_eq!((d.peer_id, a.peer_id), ([2; 16], [1; 16]));
        assert_eq!((hello.link, hello.stream, hello.streams), (77, 1, 2));
        let (dk, ak) = (d.keys.unwrap(), a.keys.unwrap());
        // Each direction's keys agree, and the two directions differ.
        assert_eq!((dk.tx, dk.rx), (ak.rx, ak.tx));
        assert_ne!(dk.tx, dk.rx, "directions have different keys");
        let (again, _) = pair(ident(1, Some(K)), ident(2, Some(K)));
        assert_ne!(again.unwrap().keys.unwrap().tx, dk.tx, "every handshake, fresh keys");
    }

    #[test]
    fn without_a_secret_nothing_is_proved_or_sealed() {
        let (d, a) = pair(ident(1, None), ident(2, None));
        assert!(d.unwrap().keys.is_none() && a.unwrap().0.keys.is_none());
    }

    #[test]
    fn mismatched_secrets_and_policies_are_refused() {
        let (d, a) = pair(ident(1, Some(K)), ident(2, Some(b"another secret of enough length")));
        assert!(d.is_err() && a.is_err(), "different secrets");
        let (d, a) = pair(ident(1, None), ident(2, Some(K)));
        assert!(d.is_err() && a.is_err(), "dialer without the secret");
        let (d, a) = pair(ident(1, Some(K)), ident(2, None));
        assert!(d.is_err() && a.is_err(), "acceptor without the secret");
    }

    #[test]
    fn a_link_of_more_streams_than_the_acceptor_takes_is_refused_with_its_maximum() {
        let (addr, t) = accepting(ident(2, Some(K)), 3);
        let mut s = TcpStream::connect(addr).unwrap();
        let e = dial(&mut s, &ident(1, Some(K)), 5, 0, 9, soon()).err().unwrap();
        assert_eq!(fewer_streams(&e), Some(3), "{e}");
        assert!(e.to_string().contains("at most 3 streams"), "{e}");
        assert!(t.join().unwrap().is_err());
        // As many as it takes: accepted.
        let (addr, t) = accepting(ident(2, Some(K)), 3);
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(dial(&mut s, &ident(1, Some(K)), 5, 2, 3, soon()).is_ok());
        assert_eq!(t.join().unwrap().unwrap().1.streams, 3);
    }

    #[test]
    fn a_router_refuses_a_link_to_itself() {
        // As dialer: the far end greets with our own id.
        let (d, _) = pair(ident(3, Some(K)), ident(3, Some(K)));
        assert!(d.err().unwrap().to_string().contains("itself"));
        // As acceptor: a dialer (a relay) says hello with our own id.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept(&mut s, &ident(3, Some(K)), MAX_STREAMS, soon())
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let mut g = [0u8; GREET_LEN];
        s.read_exact(&mut g).unwrap();
        let mut h = [0u8; HELLO_LEN];
        h[0..4].copy_from_slice(b"FFLH");
        h[4..6].copy_from_slice(&VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&FLAG_SECRET.to_le_bytes());
        h[10..12].copy_from_slice(&1u16.to_le_bytes());
        h[16..32].copy_from_slice(&g[8..24]);
        s.write_all(&h).unwrap();
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).unwrap();
        assert_eq!((&ack[0..4], u32_at(&ack, 4)), (&b"FFLA"[..], SELF_LINK), "refused, with no proof");
        assert!(t.join().unwrap().err().unwrap().to_string().contains("itself"));
    }

    #[test]
    fn the_dialer_proves_nothing_to_a_peer_without_the_secret() {
        // A fake acceptor answers GREET, takes HELLO, and answers with a
        // wrong proof: the dialer must hang up without sending its own.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut g = [0u8; GREET_LEN];
            g[0..4].copy_from_slice(b"FFLG");
            g[4..6].copy_from_slice(&VERSION.to_le_bytes());
            g[6..8].copy_from_slice(&FLAG_SECRET.to_le_bytes());
            g[8..24].copy_from_slice(&[9; 16]);
            s.write_all(&g).unwrap();
            let mut h = [0u8; HELLO_LEN];
            s.read_exact(&mut h).unwrap();
            s.write_all(&status_msg(b"FFLA", OK, Some(&[7; 32]))).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            rest
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let e = dial(&mut s, &ident(1, Some(K)), 1, 0, 1, soon()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        drop(s);
        assert!(fake.join().unwrap().is_empty(), "the dialer sent something after a bad proof");
    }

    #[test]
    fn a_stalled_peer_times_out_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _silent = std::thread::spawn(move || {
            let s = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(s);
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        let e = dial(&mut s, &ident(1, Some(K)), 1, 0, 1, Instant::now() + Duration::from_millis(300)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
