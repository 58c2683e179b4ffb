//! A peer router that proved the cluster secret and then misbehaves (a
//! compromised host, or a bug in another version): what the trust model
//! says it cannot do, tried frame by frame against a real router. Each
//! violation must drop that link alone, at once (not by the silence rule,
//! `SILENT_AFTER`: the fake keeps pinging), fail the connections it
//! carried with an error, and leave the router serving a link from an
//! honest router, every byte checked.

use super::*;
use crate::link::auth::Identity;
use crate::link::tcp::{dial_stream, TcpLink};
use fftestkit::wait_for;
use std::sync::mpsc;

/// A violation ends the link at once: well within this (a busy machine
/// may delay the receiver thread), and long before `SILENT_AFTER` (30 s).
const KILLED_WITHIN: Duration = Duration::from_secs(5);

/// A peer router speaking the wire protocol by hand over a sealed link to
/// router 0 of `two`. It pings every stream until the link breaks, so that
/// only a violation ends the link.
struct Fake {
    link: Arc<TcpLink>,
    streams: usize,
    /// Frames (header, body; DATA without its payload) the router sent,
    /// PINGs and CREDITs left out.
    frames: mpsc::Receiver<(Header, Vec<u8>)>,
    /// When the router ended the link (set once a receiver saw it broken).
    broken: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Fake {
    fn dial(addr: SocketAddr, streams: usize) -> Fake {
        Self::open(addr, streams, true)
    }

    /// `reads`: false for a peer that never reads what the router sends.
    fn open(addr: SocketAddr, streams: usize, reads: bool) -> Fake {
        let me = Identity { router_id: rand::random(), secret: Some(Arc::from(SECRET)) };
        let link_id: u64 = rand::random();
        let deadline = Instant::now() + Duration::from_secs(5);
        let socks = (0..streams)
            .map(|s| {
                let (sock, authed) = dial_stream(addr, &me, link_id, s, streams, deadline).unwrap();
                assert!(authed.keys.is_some(), "the link is sealed");
                (sock, authed.keys)
            })
            .collect();
        let link = Arc::new(TcpLink::new(socks, "fake peer".into()).unwrap());
        let (tx, frames) = mpsc::channel();
        let broken = Arc::new(Mutex::new(None));
        for s in (0..streams).filter(|_| reads) {
            let (link, tx, broken) = (link.clone(), tx.clone(), broken.clone());
            std::thread::spawn(move || loop {
                let got = link.recv_header(s).map_err(|e| e.to_string()).and_then(|b| {
                    let h = Header::decode(&b)?;
                    if h.ty == wire::DATA {
                        link::skip_payload(&*link, s, h.len as usize).map_err(|e| e.to_string())?;
                        return Ok((h, Vec::new()));
                    }
                    let mut body = vec![0u8; h.len as usize];
                    // SAFETY: body is valid for its length.
                    unsafe { link.recv_payload(s, body.as_mut_ptr(), body.len()) }.map_err(|e| e.to_string())?;
                    Ok((h, body))
                });
                match got {
                    Ok((h, _)) if h.ty == wire::PING || h.ty == wire::CREDIT => {}
                    Ok(f) => {
                        let _ = tx.send(f);
                    }
                    Err(e) => {
                        broken.lock().unwrap().get_or_insert((Instant::now(), e));
                        return;
                    }
                }
            });
        }
        let (l, b) = (link.clone(), broken.clone());
        std::thread::spawn(move || {
            while b.lock().unwrap().is_none() {
                for s in 0..streams {
                    // SAFETY: a bare header.
                    if unsafe { l.send(s, &[Frame::bare(Header::control(wire::PING, 0, 0, 0).encode())]) }.is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Fake { link, streams, frames, broken }
    }

    /// Sends a whole frame (as `wire::control_frame` makes them).
    fn send_frame(&self, s: usize, frame: &[u8]) {
        let (hdr, payload) = frame.split_at(wire::HDR_LEN);
        self.send_raw(s, hdr.try_into().unwrap(), payload);
    }

    fn send_raw(&self, s: usize, hdr: [u8; wire::HDR_LEN], payload: &[u8]) {
        // SAFETY: the payload lives for the call. A send into a link the
        // router already dropped may fail: what is checked is the drop.
        let _ = unsafe { self.link.send(s, &[Frame { hdr, ptr: payload.as_ptr(), len: payload.len() }]) };
    }

    fn data(&self, conn: u64, kind: u32, total: u64, payload: &[u8]) {
        self.send_raw(0, Header::data(conn, kind, 9, total, payload.len()).encode(), payload);
    }

    /// Opens a connection to `l` (a listener on router 0) as a client of
    /// tenant "a" with our connection id `mine`: (the router's id for it,
    /// the credit it granted, the accepted client end).
    fn connect(&self, l: &ffcore::Listener, mine: u64) -> (u64, u64, Conn) {
        let h = l.handle();
        let body = wire::Connect { tenant: "a".into(), listener: h.listener, nonce: h.nonce, credit: 16 << 10 };
        let f = wire::control_frame(wire::CONNECT, mine, &body);
        self.send_frame(self.streams - 1, &f);
        let (h, body) = self.frames.recv_timeout(Duration::from_secs(10)).expect("an answer to the CONNECT");
        assert_eq!((h.ty, h.conn), (wire::ACCEPT, mine), "accepted");
        let a: wire::Accept = wire::decode_body(&body).unwrap();
        let c = l.accept_timeout(Duration::from_secs(10)).unwrap();
        (a.conn, a.credit, c)
    }

    /// Waits for the router to end the link after `t0` (the violation),
    /// and returns how long that took.
    fn killed_since(&self, t0: Instant) -> Duration {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((at, _)) = &*self.broken.lock().unwrap() {
                return at.saturating_duration_since(t0);
            }
            assert!(Instant::now() < until, "the router kept the link of a peer that broke the protocol");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Fake {
    /// Ends the link, and with it the fake's threads.
    fn drop(&mut self) {
        self.link.shutdown();
    }
}

/// The honest link carries on: a connection between the two real routers,
/// set up after the attack, moves every size both ways, checked.
fn honest_link_still_serves(two: &Two) {
    let (_ctxs, mut a, mut b) = conn_pair(two);
    exchange(&mut a, &mut b, 1);
}

/// A client end whose connection went over a link the router dropped
/// fails (not hangs, not takes bytes) within seconds.
fn fails_soon(c: &mut Conn) {
    let mut buf = [0u8; 64];
    match c.recv(&mut buf, 9, Some(Duration::from_secs(10))) {
        Err(ffcore::Error::Timeout(_)) => panic!("the connection over the dropped link still hangs"),
        Err(_) => {}
        Ok(n) => panic!("received {n} bytes over a dropped link"),
    }
}

fn setup() -> (Two, [Context; 2], ffcore::Listener, SocketAddr) {
    let two = Two::new(Transport::Tcp, 16 << 10);
    let ctxs = [two.ctx(0), two.ctx(1)];
    let l = ctxs[0].listen().unwrap();
    let addr = l.handle().addr.expect("router 0 takes connections from other hosts");
    (two, ctxs, l, addr)
}

/// Each violation, on a link of its own: the router drops it at once, the
/// connection it carried fails, and an honest router's link carries on.
#[test]
fn a_peer_router_that_breaks_the_protocol_loses_its_own_link_only() {
    let (two, _ctxs, l, addr) = setup();
    // An honest connection, busy before and after each attack.
    let (_c, mut ha, mut hb) = conn_pair(&two);
    let payload = vec![7u8; 4 << 10];
    type Attack<'a> = (&'a str, Box<dyn Fn(&Fake, u64) + 'a>);
    let attacks: Vec<Attack> = vec![
        // Three whole 4000-byte messages, which a 16 KiB ring nobody reads
        // would still hold, but whose credit (twice their ring bytes: a
        // whole message may need a pad at the wrap) was not granted.
        ("beyond its credit", Box::new(|f: &Fake, id| (0..3).for_each(|_| f.data(id, REC_FIRST, 4000, &payload[..4000])))),
        ("reserved header bytes", Box::new(|f: &Fake, _| f.send_raw(0, [0xff; wire::HDR_LEN], &[]))),
        ("unknown frame type", Box::new(|f: &Fake, id| f.send_raw(0, Header::control(99, id, 0, 0).encode(), &[]))),
        ("data frame longer than its message", Box::new(|f: &Fake, id| f.data(id, REC_FIRST, 10, &payload[..100]))),
        ("data frame over the size limit", Box::new(|f: &Fake, id| f.send_raw(0, Header::data(id, REC_FIRST, 0, u64::MAX, wire::MAX_DATA + 1).encode(), &[]))),
        ("control frame over the size limit", Box::new(|f: &Fake, id| f.send_raw(0, Header::control(wire::CONNECT, id, 0, wire::MAX_CONTROL + 1).encode(), &[]))),
        ("undecodable CONNECT", Box::new(|f: &Fake, _| f.send_raw(1, Header::control(wire::CONNECT, 77, 0, 5).encode(), &[0xff; 5]))),
        (
            "ACCEPT with a bad ring size",
            Box::new(|f: &Fake, id| {
                let fr = wire::control_frame(wire::ACCEPT, id, &wire::Accept { conn: 1, credit: 12345 });
                f.send_frame(1, &fr);
            }),
        ),
        ("a payload on a PING", Box::new(|f: &Fake, _| f.send_raw(0, Header::control(wire::PING, 0, 0, 8).encode(), &[0; 8]))),
    ];
    for (i, (what, attack)) in attacks.iter().enumerate() {
        let fake = Fake::dial(addr, 2);
        let (id, credit, mut client) = fake.connect(&l, 1000 + i as u64);
        assert_eq!(credit, 16 << 10, "{what}: the ring the router granted");
        // The connection works until the attack.
        fake.data(id, REC_FIRST, 5, b"hello");
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf, 9, T).unwrap(), 5, "{what}: before the attack");
        assert_eq!(&buf[..5], b"hello");
        let t0 = Instant::now();
        attack(&fake, id);
        let took = fake.killed_since(t0);
        assert!(took < KILLED_WITHIN, "{what}: the link ended only after {took:?} (silence, not the violation)");
        fails_soon(&mut client);
        // The honest connection kept going meanwhile.
        ha.send(&[i as u8; 16], 1, T).unwrap();
        assert_eq!(hb.recv(&mut buf, 1, T).unwrap(), 16, "{what}: the honest connection");
        assert_eq!(buf, [i as u8; 16]);
    }
    drop((ha, hb));
    honest_link_still_serves(&two);
    // Counted, by cause, for the operator.
    let r = two.remote(0);
    assert_eq!(r.counters().drops(Cause::Protocol), attacks.len() as u64);
    assert_eq!((r.counters().drops(Cause::Io), r.counters().drops(Cause::Silent), r.counters().drops(Cause::Local)), (0, 0, 0));
    let m = crate::metrics::text(&two._routers[0]);
    assert!(m.contains(&format!("ff_router_peer_link_drops_total{{cause=\"protocol\"}} {}\n", attacks.len())), "{m}");
    assert!(m.contains("ff_router_peer_links{} 1\n") && m.contains("ff_router_peer_dial_failures_total{} 0\n"), "{m}");
}

/// Frames naming connections the peer does not carry (the honest router's
/// among them: ids are small numbers anyone can guess) reach nothing and
/// break nothing: the peer's own connection and the honest one carry on,
/// byte for byte.
#[test]
fn a_peer_router_reaches_no_connection_it_does_not_carry() {
    let (two, _ctxs, l, addr) = setup();
    let (_c, mut ha, mut hb) = conn_pair(&two);
    let fake = Fake::dial(addr, 2);
    let (id, _, mut client) = fake.connect(&l, 5);
    for other in (0..256u64).filter(|&c| c != id) {
        fake.data(other, REC_FIRST, 4, b"evil");
        fake.send_raw(0, Header::control(wire::CREDIT, other, u64::MAX, 0).encode(), &[]);
        fake.send_raw(0, Header::control(wire::CLOSE, other, 0, 0).encode(), &[]);
        let r = wire::control_frame(wire::REFUSE, other, &wire::Refuse { code: ErrorCode::NotFound, message: "no".into() });
        fake.send_frame(1, &r);
    }
    // An ACCEPT for a connection nobody asked for is answered with a CLOSE.
    let a = wire::control_frame(wire::ACCEPT, 4242, &wire::Accept { conn: 31, credit: 16 << 10 });
    fake.send_frame(0, &a);
    let (h, _) = fake.frames.recv_timeout(Duration::from_secs(10)).expect("an answer to the stray ACCEPT");
    assert_eq!((h.ty, h.conn), (wire::CLOSE, 31));
    // Credit as large as it gets, for its own connection: only the peer
    // itself can be flooded by it.
    fake.send_raw(0, Header::control(wire::CREDIT, id, u64::MAX, 0).encode(), &[]);
    fake.data(id, REC_FIRST, 5, b"after");
    let mut buf = [0u8; 16];
    assert_eq!(client.recv(&mut buf, 9, T).unwrap(), 5);
    assert_eq!(&buf[..5], b"after", "the peer's own connection, after the stray frames");
    client.send(b"back", 3, T).unwrap();
    let (h, _) = fake.frames.recv_timeout(Duration::from_secs(10)).expect("the client's answer");
    assert_eq!((h.ty, h.conn, h.arg), (wire::DATA, 5, 4), "forwarded to the peer's connection");
    for i in 0..3u8 {
        ha.send(&[i; 16], 1, T).unwrap();
        assert_eq!(hb.recv(&mut buf, 1, T).unwrap(), 16);
        assert_eq!(buf, [i; 16], "the honest connection got exactly its own bytes");
    }
    assert!(fake.broken.lock().unwrap().is_none(), "stray frames are no reason to drop a link");
    drop(fake);
    honest_link_still_serves(&two);
}

/// An ACCEPT or a REFUSE for a connection that is already set up (one the
/// peer itself opened) is a violation: the link goes, and with it the
/// connection, whose client is told. (Before, the router took the
/// connection off the link's table, answered a CLOSE and told its client
/// nothing: it waited, and whatever the peer sent for it was dropped,
/// until the link ended.)
#[test]
fn a_peer_router_that_answers_a_set_up_connection_again_loses_its_link() {
    let (two, _ctxs, l, addr) = setup();
    for refuse in [false, true] {
        let fake = Fake::dial(addr, 2);
        let (id, _, mut client) = fake.connect(&l, 6);
        let f = if refuse {
            wire::control_frame(wire::REFUSE, id, &wire::Refuse { code: ErrorCode::NotFound, message: "no".into() })
        } else {
            wire::control_frame(wire::ACCEPT, id, &wire::Accept { conn: 6, credit: 16 << 10 })
        };
        let t0 = Instant::now();
        fake.send_frame(0, &f);
        let took = fake.killed_since(t0);
        assert!(took < KILLED_WITHIN, "refuse {refuse}: the link ended only after {took:?}");
        fails_soon(&mut client);
    }
    honest_link_still_serves(&two);
}

/// A peer that sends set-up requests and never reads the answers cannot
/// make the router queue them without bound: once its unread answers pass
/// `MAX_ANSWERS_QUEUED`, its link goes. (Before, the router queued a
/// REFUSE for each of 10.6 million requests in a minute, and went on.)
#[test]
fn a_peer_router_that_never_reads_its_answers_loses_its_link() {
    let (two, _ctxs, _l, addr) = setup();
    let remote = two.remote(0);
    let links = remote.links();
    let fake = Fake::open(addr, 2, false);
    wait_for(|| remote.links() > links, Duration::from_secs(10), "the fake's link to come up");
    // CONNECTs to a listener that does not exist: each is answered with
    // a REFUSE of about 100 bytes, queued while the link's socket buffers
    // are full.
    let body = wire::Connect { tenant: "a".into(), listener: 987_654_321, nonce: 1, credit: 16 << 10 };
    let t0 = Instant::now();
    let mut sent = 0u64;
    let killed = loop {
        let frames: Vec<Vec<u8>> = (0..256).map(|i| wire::control_frame(wire::CONNECT, sent + i, &body)).collect();
        let fr: Vec<Frame> = frames.iter().map(|f| Frame::of(f)).collect();
        // SAFETY: the payloads live in `frames` for the call.
        if unsafe { fake.link.send(1, &fr) }.is_err() || remote.links() == links {
            break true;
        }
        sent += 256;
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(killed, "the router still queued answers for a peer that never reads them after {sent} requests");
    wait_for(|| remote.links() == links, Duration::from_secs(10), "the link to be dropped");
    // Bounded: the answers queued were at most the cap, however many
    // requests the peer sent (it took more than the socket buffers hold).
    assert!(sent > 1000, "only {sent} requests");
    assert_eq!(remote.counters().drops(Cause::Protocol), 1);
    honest_link_still_serves(&two);
}

/// The operator's view of links (`ff_router_peer_*` metrics): a link whose
/// peer hangs up counts as an `io` drop, a dial that finds no router as a
/// dial failure.
#[test]
fn link_drops_and_failed_dials_are_counted_by_cause() {
    let (two, ctxs, l, addr) = setup();
    let remote = two.remote(0);
    let links = remote.links();
    let fake = Fake::dial(addr, 2);
    let (_, _, _client) = fake.connect(&l, 1);
    fake.link.shutdown();
    wait_for(|| remote.links() == links && remote.counters().drops(Cause::Io) == 1, Duration::from_secs(10), "the hung-up link to be dropped");
    assert_eq!(Cause::ALL.map(|c| remote.counters().drops(c)), [0, 0, 1, 0], "protocol, silent, io, local");
    // A handle re-addressed to a port nobody listens on, used on router 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut h = l.handle();
    h.addr = Some(closed);
    let t = Instant::now();
    let res = loop {
        match ctxs[1].connect(&h) {
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            other => break other.map(|_| ()),
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the connect never failed");
    };
    assert!(matches!(res, Err(ffcore::Error::Router { code: ErrorCode::Unreachable, .. })), "{res:?}");
    let remote1 = two.remote(1);
    assert_eq!((remote.counters().dial_failures(), remote1.counters().dial_failures()), (0, 1));
    let m = crate::metrics::text(&two._routers[0]);
    assert!(m.contains("ff_router_peer_link_drops_total{cause=\"io\"} 1\n"), "{m}");
    let m = crate::metrics::text(&two._routers[1]);
    assert!(m.contains("ff_router_peer_dial_failures_total{} 1\n"), "{m}");
}

/// A peer asking for more streams per link than this router's own links
/// have (each a descriptor) is refused before anything is proved, and told
/// how many it may have: a link cannot take more of the router's
/// descriptors than its budget reserves per link (before, up to 64).
#[test]
fn a_peer_router_gets_no_more_streams_than_the_routers_own_links_have() {
    let (_two, _ctxs, _l, addr) = setup();
    let me = Identity { router_id: rand::random(), secret: Some(Arc::from(SECRET)) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = dial_stream(addr, &me, 1, 0, 64, deadline).err().expect("refused");
    // `Two` routers have 2 data streams and the set-up stream.
    assert_eq!(crate::link::auth::fewer_streams(&e), Some(3), "{e}");
    assert!(dial_stream(addr, &me, 2, 0, 3, deadline).is_ok());
}

/// A violation in the very first frame of a link, which reaches the
/// router while it is still starting the link's threads, ends the link
/// like any other, and the link is counted gone. (Before, a receiver that
/// found the violation before `Peer::up` had recorded the link killed a
/// peer with no link yet: the sockets stayed open, the fake kept pinging
/// into a link nobody shut, and `links()` kept counting it; found as a CI
/// failure of the test above, once, on a busy machine.)
#[test]
fn a_violation_in_the_first_frame_of_a_link_ends_it() {
    let (two, _ctxs, _l, addr) = setup();
    let remote = two.remote(0);
    let before = remote.links();
    for round in 0..20 {
        let fake = Fake::dial(addr, 2);
        let t0 = Instant::now();
        fake.send_raw(0, [0xff; wire::HDR_LEN], &[]);
        let took = fake.killed_since(t0);
        assert!(took < KILLED_WITHIN, "round {round}: the link ended only after {took:?}");
        wait_for(|| remote.links() == before, Duration::from_secs(10), &format!("round {round}: the link to be counted gone"));
    }
    honest_link_still_serves(&two);
}
