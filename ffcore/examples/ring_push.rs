//! What the trim handshake costs a ring's producer: pushes (and the
//! consumer's reads) of `SIZE`-byte records through one ring on one
//! thread, with a producer that takes part in the handshake
//! (`Layout::tx`, what clients use) and one that does not
//! (`Layout::tx_private`: the code of a push before trimming existed),
//! alternating, medians of the rounds.
//!
//!   cargo run --release -p ffcore --example ring_push [ROUNDS] [SIZES...]

use std::time::Instant;

use ffcore::ring::{self, Layout, REC_FIRST};
use ffcore::shm::SharedMem;

fn round(gated: bool, size: usize, msgs: usize) -> f64 {
    let ring_size = 4 << 20;
    let mem = SharedMem::create("ring-push", ring::file_len(ring_size)).unwrap();
    ring::init(&mem, ring_size);
    let lay = Layout::new(&mem, ring_size).unwrap();
    let (mut tx, mut rx) = (if gated { lay.tx(0) } else { lay.tx_private(0) }, lay.rx(1));
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    let mut sum = 0u64;
    let t = Instant::now();
    for _ in 0..msgs {
        // SAFETY: src holds `size` bytes.
        let n = unsafe { tx.push(REC_FIRST, 1, size as u64, src.as_ptr(), size) }.unwrap().unwrap();
        let rec = rx.peek().unwrap().unwrap();
        // SAFETY: dst holds `size` >= rec.len bytes.
        unsafe { rx.copy_out(0, dst.as_mut_ptr(), rec.len) };
        rx.consume(rec.len);
        sum += (n + dst[0] as usize) as u64;
    }
    let ns = t.elapsed().as_nanos() as f64 / msgs as f64;
    std::hint::black_box(sum);
    ns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(11);
    let sizes: Vec<usize> = if args.len() > 1 { args[1..].iter().map(|a| a.parse().unwrap()).collect() } else { vec![8, 4096, 65536] };
    println!("size_bytes,private_ns,gated_ns,ratio");
    for size in sizes {
        let msgs = (200_000_000 / (size + 64)).clamp(20_000, 2_000_000);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(round(false, size, msgs));
            b.push(round(true, size, msgs));
        }
        let (a, b) = (median(a), median(b));
        println!("{size},{a:.1},{b:.1},{:.3}", b / a);
    }
}
