//! A sealed link stream as someone on the path between two routers sees
//! it: records a router sealed, cut into arbitrary reads, with bytes
//! flipped, dropped or inserted anywhere. The receiving router's opener
//! never panics, never stalls with bytes left to read, and never hands out
//! a byte the sender did not seal: what comes out is always a prefix of
//! what went in, and an untouched stream comes out whole.
//!
//! Input: 8 control bytes (three payload sizes, how the stream is cut
//! into reads, how much each take asks for), then edits of 4 bytes each
//! (operation, position, value).
#![no_main]
use ffrouter::link::seal::{Opener, Sealer, MAX_RECORD, OWN_RECORDS};
use ffrouter::link::Frame;
use ffrouter::wire::HDR_LEN;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 16] = [7; 16];

/// A payload size around the sealer's thresholds (own records, whole
/// records, several records).
fn size(b: u8) -> usize {
    let b = b as usize;
    match b % 6 {
        0 => b,
        1 => OWN_RECORDS - 3 + b % 8,
        2 => 64 * b,
        3 => MAX_RECORD - HDR_LEN - 4 + b % 64,
        4 => MAX_RECORD + 3 * b,
        _ => 2 * MAX_RECORD + 64 * (b % 4),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ctl, edits) = data.split_at(8);
    let payloads: Vec<Vec<u8>> = ctl[..3].iter().enumerate().map(|(i, &b)| (0..size(b)).map(|k| (k * 13 + i) as u8).collect()).collect();
    let frames: Vec<Frame> = payloads.iter().enumerate().map(|(i, p)| Frame { hdr: [i as u8 + 1; HDR_LEN], ptr: p.as_ptr(), len: p.len() }).collect();
    let mut plain = Vec::new();
    for (f, p) in frames.iter().zip(&payloads) {
        plain.extend_from_slice(&f.hdr);
        plain.extend_from_slice(p);
    }
    let mut sealer = Sealer::new(KEY);
    // SAFETY: every frame points into a payload that outlives the call.
    let mut wire = unsafe { sealer.seal(&frames) }.to_vec();

    let mut touched = false;
    for e in edits.chunks_exact(4).take(8) {
        let at = u16::from_le_bytes([e[1], e[2]]) as usize * 37 % (wire.len() + 1);
        match e[0] % 3 {
            0 if at < wire.len() && e[3] != 0 => {
                wire[at] ^= e[3];
                touched = true;
            }
            1 if at < wire.len() => {
                wire.remove(at);
                touched = true;
            }
            2 => {
                wire.insert(at, e[3]);
                touched = true;
            }
            _ => {}
        }
    }

    let read = 1 + u16::from_le_bytes([ctl[3], ctl[4]]) as usize * 17;
    let want = match ctl[5] % 4 {
        0 => 1,
        1 => 63,
        2 => 4096 + ctl[6] as usize,
        _ => 1 << 20,
    };
    let mut opener = Opener::new(KEY);
    let mut out = vec![0u8; plain.len()];
    let (mut got, mut fed) = (0usize, 0usize);
    let mut failed = false;
    while got < plain.len() {
        let n = want.min(plain.len() - got);
        // SAFETY: out has room for n bytes from got.
        match unsafe { opener.take(out.as_mut_ptr().add(got), n) } {
            Ok(0) => {
                if fed == wire.len() {
                    break;
                }
                let k = opener
                    .fill(|b| {
                        let k = read.min(b.len()).min(wire.len() - fed);
                        b[..k].copy_from_slice(&wire[fed..fed + k]);
                        Ok(k)
                    })
                    .unwrap();
                assert!(k > 0, "the opener took no more bytes with {} left to read", wire.len() - fed);
                fed += k;
            }
            Ok(k) => {
                assert!(k <= n);
                got += k;
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                failed = true;
                break;
            }
        }
    }
    assert!(out[..got] == plain[..got], "bytes the sender did not seal came out");
    if !touched {
        assert!(!failed && got == plain.len(), "an untouched stream did not come out whole ({got} of {})", plain.len());
    }
});
