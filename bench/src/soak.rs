//! Soak: many connections, random sizes, every message checksummed and
//! sequence-numbered, senders that may be killed and restarted.
//!
//! `ffbench serve soak` accepts connections for --secs (plus a grace period)
//! and verifies every message; `ffbench connect soak` opens --conns
//! connections and sends random-size messages on all of them for --secs.
//! Each message starts with a 32-byte header: magic, epoch (one per sender
//! process), connection index, sequence number, length, CRC32 of the rest.

use std::time::{Duration, Instant};

use ffcore::{Conn, Context, Handle, Listener, Req};

const MAGIC: u32 = 0x534f_414b;
const HDR: usize = 32;
const MAX: usize = 1 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn size(r: &mut Rng) -> usize {
    // Mostly small, sometimes large: sizes spread over every order of magnitude.
    let bits = r.next() % 21;
    HDR + (r.next() as usize % (1usize << bits)).min(MAX - HDR)
}

pub fn send(ctx: &Context, handle: &Handle, conns: usize, secs: f64, seed: u64) -> ffcore::Result<()> {
    let epoch = (seed as u32) ^ std::process::id();
    let mut cs: Vec<Conn> = Vec::new();
    while cs.len() < conns {
        if let Some(c) = ctx.connect(handle)? {
            cs.push(c);
        }
    }
    let mut rng = Rng(seed | 1);
    const WINDOW: usize = 4;
    let mut bufs: Vec<Vec<(Req, Vec<u8>)>> = (0..conns).map(|_| Vec::new()).collect();
    let mut seq = vec![0u64; conns];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut sent, mut bytes) = (0u64, 0u64);
    println!("SOAK-SENDING epoch={epoch}");
    while Instant::now() < end {
        for i in 0..conns {
            // Reap completions.
            let c = &mut cs[i];
            let mut k = 0;
            while k < bufs[i].len() {
                match c.test(bufs[i][k].0)? {
                    Some(_) => {
                        bufs[i].swap_remove(k);
                    }
                    None => k += 1,
                }
            }
            while bufs[i].len() < WINDOW {
                let n = size(&mut rng);
                let mut b = vec![0u8; n];
                for (j, x) in b[HDR..].iter_mut().enumerate() {
                    *x = (j as u64 ^ seq[i]).wrapping_mul(0x9e37_79b9) as u8;
                }
                let crc = crc32fast::hash(&b[HDR..]);
                b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                b[4..8].copy_from_slice(&epoch.to_le_bytes());
                b[8..12].copy_from_slice(&(i as u32).to_le_bytes());
                b[12..20].copy_from_slice(&seq[i].to_le_bytes());
                b[20..28].copy_from_slice(&(n as u64).to_le_bytes());
                b[28..32].copy_from_slice(&crc.to_le_bytes());
                // SAFETY: the buffer moves into bufs[i] (its heap block does not
                // move) and stays there until the send completes or the
                // connection is dropped at the end.
                let r = unsafe { c.isend(b.as_ptr(), n, 0)? };
                bufs[i].push((r, b));
                seq[i] += 1;
                sent += 1;
                bytes += n as u64;
            }
        }
    }
    for (i, c) in cs.iter_mut().enumerate() {
        for (r, _) in std::mem::take(&mut bufs[i]) {
            c.wait(r, Some(Duration::from_secs(30)))?;
        }
    }
    println!("RESULT mode=soak side=send epoch={epoch} messages={sent} bytes={bytes}");
    Ok(())
}

struct Stream {
    conn: Conn,
    req: Option<Req>,
    buf: Vec<u8>,
    /// (epoch, next sequence number) once the first message arrived.
    next: Option<(u32, u64)>,
}

pub fn recv(l: &Listener, secs: f64) -> ffcore::Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut streams: Vec<Stream> = Vec::new();
    let (mut ok, mut bytes, mut corrupt, mut gaps, mut broken) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_activity = Instant::now();
    loop {
        while let Some(conn) = l.accept()? {
            streams.push(Stream { conn, req: None, buf: vec![0u8; MAX], next: None });
            last_activity = Instant::now();
        }
        let mut k = 0;
        let mut idle = true;
        while k < streams.len() {
            let s = &mut streams[k];
            let r = match s.req {
                Some(r) => r,
                // SAFETY: s.buf stays allocated and untouched until completion.
                None => unsafe { s.conn.irecv(s.buf.as_mut_ptr(), MAX, 0)? },
            };
            s.req = Some(r);
            match s.conn.test(r) {
                Ok(None) => k += 1,
                Ok(Some(n)) => {
                    idle = false;
                    s.req = None;
                    let b = &s.buf[..n];
                    let field = |a: usize, z: usize| u64::from_le_bytes({
                        let mut x = [0u8; 8];
                        x[..z - a].copy_from_slice(&b[a..z]);
                        x
                    });
                    if n < HDR || field(0, 4) as u32 != MAGIC || field(20, 28) as usize != n || field(28, 32) as u32 != crc32fast::hash(&b[HDR..]) {
                        corrupt += 1;
                    } else {
                        let (epoch, seq) = (field(4, 8) as u32, field(12, 20));
                        match s.next {
                            Some((e, want)) if e == epoch && want != seq => gaps += 1,
                            Some((e, _)) if e != epoch => corrupt += 1, // another sender's data on this connection
                            _ => {}
                        }
                        s.next = Some((epoch, seq + 1));
                        ok += 1;
                        bytes += n as u64;
                    }
                    k += 1;
                }
                Err(ffcore::Error::PeerClosed) => {
                    // The sender left (or was killed). Whatever it completed
                    // before was delivered above; a message cut short by the
                    // kill fails its receive with PeerClosed, it is not data.
                    broken += 1;
                    streams.swap_remove(k);
                }
                Err(e) => return Err(e),
            }
        }
        if !idle {
            last_activity = Instant::now();
        }
        if Instant::now() > end && (streams.is_empty() || last_activity.elapsed() > Duration::from_secs(10)) {
            break;
        }
        if idle {
            std::thread::yield_now();
        }
    }
    println!("RESULT mode=soak side=recv messages={ok} bytes={bytes} corrupt={corrupt} gaps={gaps} closed_conns={broken} open_conns={}", streams.len());
    Ok(())
}
