//! The TCP baseline: the same traffic (--size messages, --iters of them)
//! over one TCP connection between two network namespaces, framed the way
//! NCCL's Socket net frames it on its default setup (one socket, a 4-byte
//! size, then the payload; TCP_NODELAY). Blocking I/O from one thread per
//! side is the best case for TCP: no polling, no thread hand-offs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::TcpArgs;

type Res<T> = Result<T, String>;

fn io<T>(what: &str, r: std::io::Result<T>) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

pub fn recv(a: &TcpArgs) -> Res<()> {
    let l = io("bind", TcpListener::bind(("0.0.0.0", a.port)))?;
    println!("LISTENING {}", io("local_addr", l.local_addr())?.port());
    std::io::stdout().flush().ok();
    let (mut s, _) = io("accept", l.accept())?;
    io("nodelay", s.set_nodelay(true))?;
    let start = Instant::now();
    // Receive buffers in rotation, as a receiver with `window` posted.
    let mut bufs = vec![vec![0u8; a.size]; a.buffers.unwrap_or(a.window).max(1)];
    let mut bytes = 0u64;
    for i in 0..a.iters {
        let mut hdr = [0u8; 4];
        io("read size", s.read_exact(&mut hdr))?;
        let n = u32::from_le_bytes(hdr) as usize;
        let nb = bufs.len();
        let buf = &mut bufs[i % nb];
        if n > buf.len() {
            return Err(format!("message of {n} bytes exceeds the {}-byte receive", buf.len()));
        }
        io("read payload", s.read_exact(&mut buf[..n]))?;
        bytes += n as u64;
    }
    io("ack", s.write_all(&[1]))?;
    let secs = start.elapsed().as_secs_f64();
    println!("RESULT role=recv transport=tcp messages={} bytes={bytes} secs={secs:.3} mb_per_s={:.1} ok=1", a.iters, bytes as f64 / secs / 1e6);
    Ok(())
}

pub fn send(a: &TcpArgs) -> Res<()> {
    let addr = a.connect.as_deref().ok_or("tcp-send needs --connect IP:PORT")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    io("nodelay", s.set_nodelay(true))?;
    let bufs = vec![vec![0x5au8; a.size]; a.buffers.unwrap_or(a.window).max(1)];
    let hdr = (a.size as u32).to_le_bytes();
    let start = Instant::now();
    for i in 0..a.iters {
        io("write size", s.write_all(&hdr))?;
        io("write payload", s.write_all(&bufs[i % bufs.len()]))?;
    }
    let mut ack = [0u8; 1];
    io("read ack", s.read_exact(&mut ack))?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = (a.size * a.iters) as u64;
    println!("RESULT role=send transport=tcp messages={} bytes={bytes} secs={secs:.3} mb_per_s={:.1} ok=1", a.iters, bytes as f64 / secs / 1e6);
    Ok(())
}
