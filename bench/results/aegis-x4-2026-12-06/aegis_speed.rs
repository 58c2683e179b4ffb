//! aegis_speed.rs - AEGIS-128X2 against AEGIS-128X4 (aegis 0.9.20, libaegis
//! with its run-time dispatch) as the router's sealer and opener use them:
//! 64 KiB records, sealed from one buffer into another with the streaming
//! encryptor, opened into a third with the streaming decryptor (tag
//! checked). Build it as the main.rs of a scratch crate depending on
//! aegis = "=0.9.20", in release mode.
use std::time::Instant;
fn main() {
    for &size in &[64usize << 10, 4 << 20, 64 << 20] {
        let src = vec![7u8; size];
        let mut dst = vec![0u8; size];
        let key = [1u8; 16]; let nonce = [2u8; 16];
        let iters = (1usize << 31) / size;
        let rec = 64 << 10;
        macro_rules! run { ($name:expr, $m:ident, $t:ident) => {{
            let t = Instant::now();
            let mut tags = Vec::new();
            for it in 0..iters { for (s, d) in src.chunks(rec).zip(dst.chunks_mut(rec)) { let mut e = aegis::$m::$t::<16>::new(&key, &nonce).encryptor(b"abcd"); e.update(s, d); let tg = e.finalize(); if it == 0 { tags.push(tg); } } }
            let enc = (iters * size) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            let mut out = vec![0u8; size];
            for _ in 0..iters { for ((s, d), tg) in dst.chunks(rec).zip(out.chunks_mut(rec)).zip(&tags) { let mut x = aegis::$m::$t::<16>::new(&key, &nonce).decryptor(b"abcd", d); x.update(s).unwrap(); x.finalize(tg).unwrap(); } }
            let dec = (iters * size) as f64 / t.elapsed().as_secs_f64() / 1e9;

            println!("{:>8} KiB {:<6} seal {:.1} GB/s, open into another buffer {:.1} GB/s", size >> 10, $name, enc, dec);
        }}}
        run!("x2", aegis128x2, Aegis128X2);
        run!("x4", aegis128x4, Aegis128X4);
    }
}
